"""The real kopf operator (discovery, list/watch, handler dispatch, finalizers, status and
annotation patches) against kmock's in-memory Kubernetes API server, with a real Redis.

Proves: what the operator sends over HTTP with the real `kubernetes` client, and the order of
its side effects. Does not prove: API-server validation (see tests/deploy), RBAC, garbage
collection by ownerReferences, strategic-merge semantics, controllers (no pods ever run).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
from collections.abc import AsyncIterator
from typing import Any

import kopf
import kubernetes_validate
import orjson
import pytest
import redis.asyncio as aioredis

from cryptex_common import keys, registry
from cryptex_common.ledger import Ledger
from cryptex_common.messages import COMMAND_ADAPTER, CancelOrderCommand, OrderRecord, PlaceOrderCommand
from cryptex_engine.service import EngineService
from cryptex_engine.settings import EngineSettings
from cryptex_operator import handlers, render  # noqa: F401  (registers the handlers)
from cryptex_operator.config import OperatorSettings
from tests.support.depth_book import store_book
from tests.support.eventually import eventually as poll
from tests.support.servers import RedisServer

# kopf writes objects in stages: a key or an item not there yet means "not yet"
eventually = functools.partial(poll, ignoring=(KeyError, IndexError, AssertionError))

NS = "cryptex"
MARKETS = "cryptex.io/v1alpha1/markets"
DEPLOYMENTS = "apps/v1/deployments"
SOL = {
    "symbol": "SOL/USDC", "baseAsset": "SOL", "baseDecimals": 9, "quoteAsset": "USDC",
    "quoteDecimals": 6, "tickSize": "0.01", "lotSize": "0.001", "minQuantity": "0.001",
    "maxQuantity": "100000", "minNotional": "1", "makerFeeBps": 10, "takerFeeBps": 20,
    "selfTradePrevention": "expire_maker", "state": "open",
}
# What a configure carries besides state and fees (issue 11 defect 1): SOL's rules in lots/units.
SOL_RULES = {"v": 2, "minQuantityLots": 1, "maxQuantityLots": 100_000_000, "minNotionalUnits": 1_000_000,
             "selfTradePrevention": "expire_maker"}


def market(name: str = "sol-usdc", spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "cryptex.io/v1alpha1", "kind": "Market",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1"},  # kmock keeps what it is given
            "spec": copy.deepcopy(spec or SOL)}



@pytest.fixture
async def api(kmock: Any, redis_srv: RedisServer, redis_client: aioredis.Redis,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """kmock serving the resources the operator uses, and the operator running against it."""
    R = kmock.ResourceInfo
    kmock.resources[MARKETS] = R(kind="Market", namespaced=True, subresources={"status"},
                                 verbs={"list", "watch", "get", "patch", "create", "delete"})
    kmock.resources[DEPLOYMENTS] = R(kind="Deployment", namespaced=True,
                                     verbs={"list", "watch", "get", "create", "patch", "delete"})
    # kopf's own machinery waits for these before it starts watching.
    kmock.resources["v1/namespaces"] = R(kind="Namespace", namespaced=False,
                                         verbs={"list", "watch", "get"})
    kmock.resources["v1/events"] = R(kind="Event", namespaced=True, verbs={"create"})
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = R(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch", "get"})
    for name, value in {
        "CRYPTEX_K8S_SERVER": str(kmock.url).rstrip("/"),
        "CRYPTEX_REDIS_URL": redis_srv.url,
        "CRYPTEX_ENGINE_IMAGE": "registry.local/cryptex/engine:1.2.3",
        "CRYPTEX_ENGINE_ENV_SECRET": "cryptex-connections",
        "CRYPTEX_RELEASE": "cryptex",
        "CRYPTEX_DRAIN_POLL_S": "0.1",
        "CRYPTEX_DRAIN_WAIT_S": "0.3",
    }.items():
        monkeypatch.setenv(name, value)
    # The operator runs in its own thread and event loop, as in production: kopf stops only
    # its own tasks then (in a shared loop it waits for kmock's open watch handlers).
    stop = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(
        kopf.operator(clusterwide=True, standalone=True, stop_flag=stop)))
    thread.start()
    try:
        yield kmock
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)


def obj(api: Any, resource: str, name: str) -> dict[str, Any]:
    return api.objects[resource, NS, name].raw


def alive(api: Any, resource: str, name: str) -> bool:
    try:
        return not api.objects[resource, NS, name].deleted
    except KeyError:
        return False


async def create(api: Any, body: dict[str, Any]) -> None:
    async with api.post(f"/apis/cryptex.io/v1alpha1/namespaces/{NS}/markets", json=body) as r:
        assert r.status in (200, 201), await r.text()


async def patch(api: Any, name: str, body: dict[str, Any]) -> None:
    url = f"/apis/cryptex.io/v1alpha1/namespaces/{NS}/markets/{name}"
    headers = {"Content-Type": "application/merge-patch+json"}
    async with api.patch(url, json=body, headers=headers) as r:
        assert r.status == 200, await r.text()


async def delete(api: Any, name: str = "sol-usdc") -> None:
    async with api.delete(f"/apis/cryptex.io/v1alpha1/namespaces/{NS}/markets/{name}") as r:
        assert r.status == 200


async def commands(redis: aioredis.Redis, symbol: str) -> list[dict[str, Any]]:
    entries = await redis.xrange(keys.commands_stream(symbol))
    return [COMMAND_ADAPTER.validate_json(fields[b"c"]).model_dump(by_alias=True, mode="json")
            for _, fields in entries]


async def test_create_registers_market_and_creates_the_engine(
        api: Any, redis_client: aioredis.Redis) -> None:
    await create(api, market())
    await eventually(lambda: alive(api, DEPLOYMENTS, "engine-sol-usdc"))
    dep = obj(api, DEPLOYMENTS, "engine-sol-usdc")

    cfg = OperatorSettings()
    assert dep == render.engine_deployment(
        name="sol-usdc", namespace=NS, uid="uid-sol-usdc", spec=SOL, cfg=cfg)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "cryptex.io/v1alpha1", "kind": "Market", "name": "sol-usdc",
        "uid": "uid-sol-usdc", "controller": True, "blockOwnerDeletion": True}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--market", "SOL/USDC"]
    assert container["image"] == "registry.local/cryptex/engine:1.2.3"
    assert dep["metadata"]["annotations"]["cryptex.io/command-stream"] == "MESSAGES:{SOL_USDC}"
    kubernetes_validate.validate(dep, "1.31", strict=True)

    spec = await registry.get_market(redis_client, "SOL/USDC")
    assert spec is not None and spec.to_wire() == SOL
    assert await commands(redis_client, "SOL/USDC") == [
        {"type": "configure", "state": "open", "makerFeeBps": 10, "takerFeeBps": 20, **SOL_RULES}]

    status = await eventually(lambda: obj(api, MARKETS, "sol-usdc").get("status"))
    assert status["phase"] == "Trading"
    assert status["engine"] == "engine-sol-usdc"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "False", "EngineAvailable": "False"}
    # kopf's finalizer is ours, and its bookkeeping is in annotations, not in status.
    meta = obj(api, MARKETS, "sol-usdc")["metadata"]
    assert meta["finalizers"] == ["cryptex.io/market-drain"]
    assert not set(status) - {"phase", "observedGeneration", "engine", "message", "conditions",
                              "lastSequence"}


async def test_status_follows_the_engine_at_a_bounded_rate(
        api: Any, redis_client: aioredis.Redis) -> None:
    await create(api, market())
    await eventually(lambda: obj(api, MARKETS, "sol-usdc").get("status"))
    # What the Deployment controller and the engine would do: pod available, batches settled.
    api.objects[DEPLOYMENTS, NS, "engine-sol-usdc"].patch({"status": {"availableReplicas": 1}})
    await redis_client.set(keys.settled_seq_key("SOL/USDC"), 42)

    def ready() -> dict[str, Any] | None:
        status = obj(api, MARKETS, "sol-usdc")["status"]
        conds = {c["type"]: c["status"] for c in status["conditions"]}
        ok = conds == {"Ready": "True", "EngineAvailable": "True"}
        return status if ok and status.get("lastSequence") == 42 else None

    status = await eventually(ready)
    assert status["message"] == ""
    # Nothing changes: no more status writes (the timer writes only differences).
    writes = len(api.objects[MARKETS, NS, "sol-usdc"].history)
    await asyncio.sleep(1.0)  # a few timer intervals
    assert len(api.objects[MARKETS, NS, "sol-usdc"].history) == writes


async def test_update_sends_state_and_fees_as_commands_and_patches_resources(
        api: Any, redis_client: aioredis.Redis) -> None:
    await create(api, market())
    await eventually(lambda: obj(api, MARKETS, "sol-usdc").get("status"))
    await patch(api, "sol-usdc", {
        "metadata": {"generation": 2},
        "spec": {"state": "halted", "takerFeeBps": 25,
                 "engine": {"resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}}})

    def patched() -> dict[str, Any] | None:
        dep = obj(api, DEPLOYMENTS, "engine-sol-usdc")
        res = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
        return res if res["limits"] == {"cpu": "2", "memory": "1Gi"} else None

    res = await eventually(patched)
    assert res["requests"] == render.DEFAULT_RESOURCES["requests"]
    await eventually(lambda: obj(api, MARKETS, "sol-usdc")["status"]["phase"] == "Halted")
    assert await commands(redis_client, "SOL/USDC") == [
        {"type": "configure", "state": "open", "makerFeeBps": 10, "takerFeeBps": 20, **SOL_RULES},
        {"type": "configure", "state": "halted", "makerFeeBps": 10, "takerFeeBps": 25, **SOL_RULES},
    ]
    spec = await registry.get_market(redis_client, "SOL/USDC")
    assert spec is not None and spec.state == "halted" and spec.taker_fee_bps == 25
    kubernetes_validate.validate(obj(api, DEPLOYMENTS, "engine-sol-usdc"), "1.31", strict=True)


async def settle_everything(redis: aioredis.Redis, symbol: str) -> None:
    """What the engine does, played by the test: settle every entry of the command stream."""
    info = await redis.xinfo_stream(keys.commands_stream(symbol))
    await redis.set(keys.settled_seq_key(symbol), info["entries-added"])


async def test_delete_drains_then_closes_then_removes_the_engine(
        api: Any, redis_client: aioredis.Redis) -> None:
    symbol = "SOL/USDC"
    await create(api, market())
    await eventually(lambda: alive(api, DEPLOYMENTS, "engine-sol-usdc"))
    # The engine's side, played by the test: everything settled, a book with orders.
    await settle_everything(redis_client, symbol)
    await store_book(redis_client, symbol, 7, [["20.00", "1.5"]], [["21.00", "2"]])

    await delete(api)
    await eventually(lambda: obj(api, MARKETS, "sol-usdc")["status"]["phase"] == "Draining")
    spec = await registry.get_market(redis_client, symbol)
    assert spec is not None and spec.state == "cancelOnly"
    await eventually(lambda: "1 commands not yet processed" in obj(api, MARKETS, "sol-usdc")["status"]["message"])
    await settle_everything(redis_client, symbol)  # the engine applies cancelOnly
    await eventually(lambda: "cancelOnly: 1 bid and 1 ask levels resting, 0 commands"
                     in obj(api, MARKETS, "sol-usdc")["status"]["message"])
    await asyncio.sleep(0.5)  # several drain polls: the book still has orders
    assert alive(api, MARKETS, "sol-usdc") and alive(api, DEPLOYMENTS, "engine-sol-usdc")

    # The users cancel; the book empties. The engine has not yet settled `closed`: still waiting.
    await store_book(redis_client, symbol, 8, [], [])
    await eventually(lambda: "closed: 0 bid and 0 ask levels resting, 1 commands"
                     in obj(api, MARKETS, "sol-usdc")["status"]["message"])
    assert alive(api, DEPLOYMENTS, "engine-sol-usdc")
    assert [c["state"] for c in await commands(redis_client, symbol)] == ["open", "cancelOnly", "closed"]

    # The engine settles `closed` and the book is still empty: engine and Market removed.
    await settle_everything(redis_client, symbol)
    await eventually(lambda: not alive(api, DEPLOYMENTS, "engine-sol-usdc"))
    await eventually(lambda: not alive(api, MARKETS, "sol-usdc"))
    spec = await registry.get_market(redis_client, symbol)
    assert spec is not None and spec.state == "closed"  # delisted, history kept


async def test_replayed_events_are_harmless(api: Any, redis_client: aioredis.Redis) -> None:
    """A Deployment left by an earlier run (or a replayed ADDED event) is patched, not
    duplicated, and the registry gets no second configure command."""
    await create(api, market())
    await eventually(lambda: obj(api, MARKETS, "sol-usdc").get("status"))
    dep_before = obj(api, DEPLOYMENTS, "engine-sol-usdc")
    # Forget kopf's progress, as a fresh operator would after a restart, and re-run.
    meta = obj(api, MARKETS, "sol-usdc")["metadata"]
    stale = {k: None for k in meta.get("annotations", {}) if k.startswith("cryptex.io/")}
    await patch(api, "sol-usdc", {"metadata": {"annotations": stale}})
    await asyncio.sleep(0.5)
    assert obj(api, DEPLOYMENTS, "engine-sol-usdc") == dep_before
    assert len(await commands(redis_client, "SOL/USDC")) == 1
    assert obj(api, MARKETS, "sol-usdc")["status"]["phase"] == "Trading"


async def test_same_symbol_twice_is_a_conflict(api: Any) -> None:
    await create(api, market())
    await eventually(lambda: alive(api, DEPLOYMENTS, "engine-sol-usdc"))
    await create(api, market(name="sol-usdc-again"))
    status = await eventually(lambda: obj(api, MARKETS, "sol-usdc-again").get("status"))
    assert status["phase"] == "Failed"
    assert status["conditions"][0]["reason"] == "Conflict"
    owner = obj(api, DEPLOYMENTS, "engine-sol-usdc")["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-sol-usdc"


async def test_invalid_grid_is_a_permanent_failure(api: Any) -> None:
    bad = {**SOL, "lotSize": "0.0000000001"}  # finer than the base asset's 9 decimals
    await create(api, market(spec=bad))
    status = await eventually(lambda: obj(api, MARKETS, "sol-usdc").get("status"))
    assert status["phase"] == "Failed"
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert "lotSize" in status["message"]
    assert not alive(api, DEPLOYMENTS, "engine-sol-usdc")


# --- the drain against a real engine (issue 11 defect 3) ------------------------------------
class Engine:
    """The market's engine, in process on the test's Redis: started and stopped at will, as
    the Deployment's pod would be (a restart, a slow start)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.task: asyncio.Task[None] | None = None
        self.stop_flag = asyncio.Event()

    async def start(self) -> None:
        self.redis = aioredis.Redis.from_url(self.url, decode_responses=True)
        spec = await registry.get_market(self.redis, "SOL/USDC")
        assert spec is not None
        cfg = EngineSettings(redis_url=self.url, market="SOL/USDC", lease_ttl_ms=2000, block_ms=20,
                             snapshot_every_commands=0, snapshot_every_s=0, trim_every_s=0)
        self.service = EngineService(cfg, self.redis, spec)
        self.stop_flag = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop_flag))
        await eventually(lambda: self.service.ready)

    async def stop(self) -> None:
        if self.task is not None:
            self.stop_flag.set()
            await self.task
            self.task = None
            await self.redis.aclose()


@pytest.fixture
async def engine(redis_srv: RedisServer) -> AsyncIterator[Engine]:
    e = Engine(redis_srv.url)
    yield e
    await e.stop()


async def queue_buy(redis: aioredis.Redis, user: str, price_ticks: int, lots: int = 1000) -> int:
    """A limit buy through the real enqueue script (funds locked), as the API queues it."""
    units = price_ticks * lots * 10  # SOL/USDC: tick 0.01 USDC x lot 0.001 SOL = 10 units
    status, _ = await Ledger(redis).move_funds(kind="deposit", user_id=user, asset="USDC", units=units,
                                               tx_id=f"seed-{user}-{price_ticks}", record={})
    assert status == "ok"
    command = PlaceOrderCommand(userId=user, side="buy", orderType="limit", priceTicks=price_ticks,
                                quantityLots=lots, lockedUnits=units)
    tail = orjson.dumps(OrderRecord(
        orderId=0, userId=user, market="SOL/USDC", side="buy", orderType="limit", timeInForce="GTC",
        postOnly=False, priceTicks=price_ticks, quantityLots=lots, status="new", createdMs=0, updatedMs=0,
    ).model_dump(by_alias=True, mode="json", exclude={"order_id", "created_ms", "updated_ms"}))
    enq = await Ledger(redis).place(
        symbol="SOL/USDC", user_id=user, lock_asset="USDC", lock_units=units,
        command_json=command.model_dump_json(by_alias=True), record_tail_json=tail.decode()[1:],
        client_order_id=None)
    assert enq.status == "ok" and enq.order_id is not None
    return enq.order_id


async def cancel(redis: aioredis.Redis, user: str, order_id: int) -> None:
    """What the API's DELETE /order queues."""
    cmd = CancelOrderCommand(userId=user, orderId=order_id)
    await redis.xadd(keys.commands_stream("SOL/USDC"), {"c": cmd.model_dump_json(by_alias=True)})


async def usdc_locked(redis: aioredis.Redis, user: str) -> int:
    return (await Ledger(redis).balances(user)).get("USDC", {}).get("locked", 0)


async def test_orders_queued_before_cancel_only_never_rest_in_a_closed_market(
        api: Any, redis_client: aioredis.Redis, engine: Engine) -> None:
    """issue 11 defect 3: the drain decided "book empty" from the depth key and ignored the
    commands still queued: orders queued before cancelOnly rested after `closed` with their
    funds locked, and every cancel was refused. Here the engine is down while the Market is
    deleted (a restart), with two buys queued."""
    await create(api, market())
    await eventually(lambda: alive(api, DEPLOYMENTS, "engine-sol-usdc"))
    await engine.start()  # processes the registration, then goes away for a while
    await engine.stop()
    orders = [await queue_buy(redis_client, "u1", 1000), await queue_buy(redis_client, "u1", 990)]
    assert await usdc_locked(redis_client, "u1") > 0

    await delete(api)
    await asyncio.sleep(0.5)  # several drain polls with the engine away
    spec = await registry.get_market(redis_client, "SOL/USDC")
    assert spec is not None and spec.state == "cancelOnly"  # not closed: commands are pending
    assert alive(api, DEPLOYMENTS, "engine-sol-usdc")

    await engine.start()  # the orders rest (they were queued while open); cancelOnly follows
    await eventually(lambda: "2 bid" in obj(api, MARKETS, "sol-usdc")["status"]["message"])
    spec = await registry.get_market(redis_client, "SOL/USDC")
    assert spec is not None and spec.state == "cancelOnly"  # cancels are still accepted
    for oid in orders:
        await cancel(redis_client, "u1", oid)

    await eventually(lambda: not alive(api, DEPLOYMENTS, "engine-sol-usdc"))
    await eventually(lambda: not alive(api, MARKETS, "sol-usdc"))
    spec = await registry.get_market(redis_client, "SOL/USDC")
    assert spec is not None and spec.state == "closed"
    assert engine.service.core.open_orders_count() == 0
    assert await usdc_locked(redis_client, "u1") == 0  # every lock released


async def test_a_closed_market_with_resting_orders_goes_back_to_cancel_only(
        api: Any, redis_client: aioredis.Redis, engine: Engine) -> None:
    """issue 11 defect 3, the rule after closing: when, with every command processed, orders
    still rest in a closed market (closed by a spec edit, or an order that slipped in), the
    drain moves it back to cancelOnly so they can be cancelled, and closes again once empty."""
    await create(api, market())
    await eventually(lambda: alive(api, DEPLOYMENTS, "engine-sol-usdc"))
    await engine.start()
    oid = await queue_buy(redis_client, "u2", 1000)
    await eventually(lambda: engine.service.core.open_orders_count() == 1)
    await patch(api, "sol-usdc", {"metadata": {"generation": 2}, "spec": {"state": "closed"}})
    await eventually(lambda: obj(api, MARKETS, "sol-usdc")["status"]["phase"] == "Closed")

    await delete(api)
    await eventually(lambda: "1 bid" in obj(api, MARKETS, "sol-usdc")["status"]["message"])
    await eventually(lambda: engine.service.core.state == "cancelOnly")
    await cancel(redis_client, "u2", oid)
    await eventually(lambda: not alive(api, MARKETS, "sol-usdc"))
    assert engine.service.core.open_orders_count() == 0
    assert await usdc_locked(redis_client, "u2") == 0
    spec = await registry.get_market(redis_client, "SOL/USDC")
    assert spec is not None and spec.state == "closed"
