"""The engine service against a real Redis, in process: commands it cannot decode (issue 11
defect 6) and rules it judges by (issue 11 defect 1), each settled and replayed alike.

Entries are written the way the enqueue script writes them: `id` (order id), `c` (command
JSON) and the lock envelope (user, asset, units: cryptex_common.ledger.ENTRY_*), after the
user's units moved from available to locked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from cryptex_common import keys
from cryptex_common.ledger import Ledger
from cryptex_common.markets import MarketSpec, load_markets_yaml
from cryptex_common.messages import PlaceOrderCommand
from cryptex_common.registry import register_market
from cryptex_engine.replay import replay_market
from cryptex_engine.service import EngineService
from cryptex_engine.settings import EngineSettings
from tests.chaos.support import ROOT
from tests.support.eventually import eventually
from tests.support.servers import RedisServer

try:  # the names the enqueue script uses for the lock envelope
    from cryptex_common.ledger import ENTRY_LOCK_ASSET, ENTRY_LOCK_UNITS, ENTRY_USER
except ImportError:  # pragma: no cover - until the ledger defines them
    ENTRY_USER, ENTRY_LOCK_ASSET, ENTRY_LOCK_UNITS = "u", "a", "l"

SOL = "SOL/USDC"


def sol_spec(**update: Any) -> MarketSpec:
    spec = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == SOL)
    return spec.model_copy(update=update)


@pytest.fixture
async def redis(redis_srv: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


def settings(url: str) -> EngineSettings:
    return EngineSettings(redis_url=url, market=SOL, lease_ttl_ms=2000, block_ms=20,
                          snapshot_every_commands=0, snapshot_every_s=0, trim_every_s=0)


async def wait_settled(redis: aioredis.Redis, service: EngineService, task: asyncio.Task[None],
                       timeout_s: float = 10.0) -> None:
    """Until the running engine has read and settled every entry of the command stream."""
    async def caught_up() -> bool:
        assert not task.done(), task.exception()  # not ignored: a dead engine ends the wait
        last = await redis.xrevrange(keys.commands_stream(SOL), count=1)
        return bool(service.ready and last and service.last_stream_id == last[0][0]
                    and service.core.seq == service.settled_seq)

    await eventually(caught_up, timeout_s, interval_s=0.02, what="engine caught up")


async def run_until_settled(redis: aioredis.Redis, url: str, spec: MarketSpec,
                            timeout_s: float = 10.0) -> EngineService:
    """One engine run until it settled the whole stream, then a graceful stop."""
    service = EngineService(settings(url), redis, spec)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await wait_settled(redis, service, task, timeout_s)
    finally:
        stop.set()
        await task
    return service


async def fund(redis: aioredis.Redis, user: str, asset: str, units: int) -> None:
    status, _ = await Ledger(redis).move_funds(kind="deposit", user_id=user, asset=asset, units=units,
                                               tx_id=f"seed-{user}-{asset}", record={})
    assert status == "ok"


async def enqueue_raw(redis: aioredis.Redis, user: str, asset: str, units: int, command: str,
                      envelope: bool = True) -> int:
    """What R1 and the hand-over do, with any `c`: lock, order id, XADD, open order record."""
    bucket = keys.user_bucket(user)
    pipe = redis.pipeline(transaction=True)
    pipe.hincrby(keys.balance_key(user), keys.available_field(asset), -units)
    pipe.hincrby(keys.balance_key(user), keys.locked_field(asset), units)
    pipe.incr(keys.order_id_counter(bucket))
    order_id = (await pipe.execute())[2] * keys.USER_BUCKETS + bucket
    fields: dict[str, Any] = {"id": order_id, "c": command}
    if envelope:
        fields.update({ENTRY_USER: user, ENTRY_LOCK_ASSET: asset, ENTRY_LOCK_UNITS: units})
    sid = await redis.xadd(keys.commands_stream(SOL), fields)
    ts = int(sid.split("-")[0])
    record = {"orderId": order_id, "userId": user, "market": SOL, "side": "buy", "orderType": "limit",
              "timeInForce": "GTC", "postOnly": False, "priceTicks": 10000, "quantityLots": 1000,
              "status": "new", "createdMs": ts, "updatedMs": ts}
    await redis.hset(keys.order_key(order_id), mapping={"r": orjson.dumps(record).decode(), "m": SOL, "u": user})
    await redis.zadd(keys.open_orders_key(user), {str(order_id): order_id})
    return int(order_id)


def place_json(user: str, lots: int, price: int, locked: int, **extra: Any) -> str:
    return PlaceOrderCommand(userId=user, side="buy", orderType="limit", priceTicks=price,
                             quantityLots=lots, lockedUnits=locked, **extra).model_dump_json(by_alias=True)


async def balance(redis: aioredis.Redis, user: str, asset: str) -> tuple[int, int]:
    b = await Ledger(redis).balances(user)
    row = b.get(asset, {"available": 0, "locked": 0})
    return row["available"], row["locked"]


async def record(redis: aioredis.Redis, order_id: int) -> dict[str, Any]:
    raw = await redis.hget(keys.order_key(order_id), "r")
    assert raw
    return dict(orjson.loads(raw))


async def test_an_undecodable_order_is_rejected_in_sequence_and_its_lock_released(
        redis: aioredis.Redis, redis_srv: RedisServer) -> None:
    """issue 11 defect 6: an entry whose `c` cannot be decoded (garbage, or a command
    version newer than this engine knows) is dead-lettered AND, carrying an order id and a
    lock envelope, settled as a rejection in sequence: record rejected with a reason code,
    locked units back to available, a REJECTED reply where a reply channel can be read. A
    restart replaying the stream from scratch and `cryptex replay` reach the same state and
    release nothing twice."""
    spec = sol_spec()
    await register_market(redis, spec)
    await fund(redis, "alice", "USDC", 10_000_000)
    pubsub = redis.pubsub()
    await pubsub.subscribe("reply:test-api")
    garbage = await enqueue_raw(redis, "alice", "USDC", 1_000_000, "{not json")
    future = await enqueue_raw(redis, "alice", "USDC", 2_000_000, orjson.dumps({
        "v": 99, "type": "place", "userId": "alice", "side": "buy", "replyTo": "reply:test-api",
        "requestId": "req-1", "somethingNew": True}).decode())
    bare = await enqueue_raw(redis, "alice", "USDC", 500_000, "{also not json", envelope=False)
    good = await enqueue_raw(redis, "alice", "USDC", 1_000_000, place_json("alice", 10, 10000, 1_000_000))
    service = await run_until_settled(redis, redis_srv.url, spec)

    for oid in (garbage, future):
        rec = await record(redis, oid)
        assert rec["status"] == "rejected" and rec["reason"] == "UNSUPPORTED_COMMAND", rec
        assert not await redis.zscore(keys.open_orders_key("alice"), str(oid))
    assert (await record(redis, good))["status"] == "new"
    assert (await record(redis, bare))["status"] == "new"  # no envelope: nothing to release
    # locked: the good order + the bare entry's lock (unknowable without its envelope)
    assert await balance(redis, "alice", "USDC") == (10_000_000 - 1_500_000, 1_500_000)
    dead = await redis.xrange(keys.dead_letter_stream(SOL))
    assert len(dead) == 3, dead
    msg = None
    for _ in range(50):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg:
            break
    assert msg, "no REJECTED reply"
    replies = orjson.loads(msg["data"])
    assert replies[0]["type"] == "REJECTED" and replies[0]["requestId"] == "req-1"
    assert replies[0]["code"] == "UNSUPPORTED_COMMAND"
    await pubsub.aclose()
    # configure + 2 rejections + the good place: the bare entry takes no sequence number
    assert service.core.seq == 4
    live_hash = service.core.state_hash()

    await redis.delete(keys.snapshot_key(SOL))  # rebuild from the whole stream
    again = await run_until_settled(redis, redis_srv.url, spec)
    assert (again.core.seq, again.core.state_hash()) == (4, live_hash)
    assert await balance(redis, "alice", "USDC") == (10_000_000 - 1_500_000, 1_500_000)
    assert len(await redis.xrange(keys.dead_letter_stream(SOL))) == 3  # not dead-lettered twice
    rep = await replay_market(redis_srv.url, SOL)
    assert (rep["seq"], rep["stateHash"]) == (4, live_hash)
    report = await Ledger(redis).conservation_report()
    assert report["USDC"]["held"] == report["USDC"]["deposits"] - report["USDC"]["withdrawals"]


async def test_the_engine_judges_orders_by_its_sequenced_rules(
        redis: aioredis.Redis, redis_srv: RedisServer) -> None:
    """issue 11 defect 1: the engine is the authority on minQuantity / maxQuantity /
    minNotional. An order queued under the old rules (the API's pre-check passed) but
    reaching the engine after a configure that tightened them is rejected with the API's
    error code and its lock released; an order queued before the configure is judged by the
    rules in force at its own sequence number, live and in every replay."""
    spec = sol_spec()
    await register_market(redis, spec)
    await fund(redis, "bob", "USDC", 2_000_000_000)
    # 8 SOL @ 100 USDC (8000 lots, 10000 ticks): 800 USDC
    before = await enqueue_raw(redis, "bob", "USDC", 800_000_000, place_json("bob", 8000, 10000, 800_000_000))
    await register_market(redis, spec.model_copy(update={"max_quantity": "5", "min_notional": "10"}))
    # 8 SOL @ 10 USDC: too large now; 1 SOL @ 5 USDC: notional 5 < 10 now
    after = await enqueue_raw(redis, "bob", "USDC", 80_000_000, place_json("bob", 8000, 1000, 80_000_000))
    tiny = await enqueue_raw(redis, "bob", "USDC", 5_000_000, place_json("bob", 1000, 500, 5_000_000))
    service = await run_until_settled(redis, redis_srv.url, spec)
    assert (await record(redis, before))["status"] == "new"
    rec = await record(redis, after)
    assert (rec["status"], rec["reason"]) == ("rejected", "QUANTITY_TOO_LARGE")
    rec = await record(redis, tiny)
    assert (rec["status"], rec["reason"]) == ("rejected", "NOTIONAL_TOO_SMALL")
    assert await balance(redis, "bob", "USDC") == (2_000_000_000 - 800_000_000, 800_000_000)
    live = (service.core.seq, service.core.state_hash())
    await redis.delete(keys.snapshot_key(SOL))
    again = await run_until_settled(redis, redis_srv.url, spec.model_copy(update={"max_quantity": "1"}))
    assert (again.core.seq, again.core.state_hash()) == live
    rep = await replay_market(redis_srv.url, SOL)
    assert (rep["seq"], rep["stateHash"]) == live


async def test_private_updates_reach_a_user_who_subscribed_just_before_the_batch(
        redis: aioredis.Redis, redis_srv: RedisServer) -> None:
    """issue 11 defect 7 (engine side): which users get `user@<id>` updates is decided inside
    the settle script at settle time, not by a list the engine refreshed once a second: a
    user who subscribed a moment before the batch gets its order update; a user without a
    live subscription gets nothing published."""
    spec = sol_spec()
    await register_market(redis, spec)
    for user in ("carol", "dave"):
        await fund(redis, user, "USDC", 10_000_000)
    service = EngineService(settings(redis_srv.url), redis, spec)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    pubsub = redis.pubsub()
    try:
        while not service.ready:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.02)
        await pubsub.subscribe(keys.user_channel("carol"), keys.user_channel("dave"))
        await asyncio.sleep(1.2)  # past any once-a-second refresh of a subscriber list
        await redis.zadd(keys.subscribers_key(keys.user_tag("carol")), {"carol": int(time.time() * 1000) + 60_000})
        await redis.zadd(keys.subscribers_key(keys.user_tag("dave")), {"dave": int(time.time() * 1000) - 1})  # lapsed
        for user in ("carol", "dave"):
            await enqueue_raw(redis, user, "USDC", 1_000_000, place_json(user, 10, 10000, 1_000_000))
        got: list[tuple[str, str]] = []
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if msg:
                got.append((msg["channel"], orjson.loads(msg["data"])["type"]))
        assert (keys.user_channel("carol"), "order") in got, got
        assert all(channel != keys.user_channel("dave") for channel, _ in got), got
    finally:
        await pubsub.aclose()
        stop.set()
        await task


async def test_the_enqueue_scripts_envelope_is_what_the_engine_releases(
        redis: aioredis.Redis, redis_srv: RedisServer) -> None:
    """issue 11 defect 6, through the real enqueue script: a command of a newer version
    queued by Ledger.enqueue_order is rejected and exactly its lock released."""
    spec = sol_spec()
    await register_market(redis, spec)
    await fund(redis, "erin", "SOL", 5_000_000_000)
    tail = orjson.dumps({"userId": "erin", "market": SOL, "side": "sell", "orderType": "limit",
                         "timeInForce": "GTC", "postOnly": False, "priceTicks": 10000,
                         "quantityLots": 2000, "status": "new"}).decode()[1:]
    enq = await Ledger(redis).place(
        symbol=SOL, user_id="erin", lock_asset="SOL", lock_units=2_000_000_000,
        command_json=orjson.dumps({"v": 3, "type": "place", "userId": "erin", "side": "sell"}).decode(),
        record_tail_json=tail, client_order_id=None)
    assert enq.status == "ok" and enq.order_id is not None
    assert await balance(redis, "erin", "SOL") == (3_000_000_000, 2_000_000_000)
    await run_until_settled(redis, redis_srv.url, spec)
    rec = await record(redis, enq.order_id)
    assert (rec["status"], rec["reason"], rec["side"]) == ("rejected", "UNSUPPORTED_COMMAND", "sell")
    assert await balance(redis, "erin", "SOL") == (5_000_000_000, 0)
