"""Each image, built by scripts/build-images.sh, started with podman the way the chart runs it:
read-only root filesystem, every capability dropped, no privilege escalation, uid 10001,
on the host network against a Redis and a PostgreSQL this test session started.

Proves: the images build from the Dockerfiles; each starts as uid 10001 on a read-only root,
answers /healthz, /readyz (its dependencies reached) and /metrics on its ops port; the engine
image matches a crossing pair placed through the API image; the operator image logs in to
an API server (kmock) and creates an engine Deployment for a Market.
Does not prove: the official python base image (this one is made by debootstrap, same Debian
release), a kubelet or a cluster network (see test_chart_pods.py for the rendered pods).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common.markets import load_markets_yaml
from cryptex_common.registry import get_market, register_market
from tests.images.conftest import Images, record
from tests.images.podman import ROOT, Container, http_get, podman, run, started, wait_http
from tests.support.servers import PostgresServer, RedisServer, free_port, new_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ADMIN = "images-admin-token"
SOL = "SOL/USDC"


async def register_markets(redis: aioredis.Redis) -> None:
    for spec in load_markets_yaml((ROOT / "markets.yaml").read_text()):
        await register_market(redis, spec)


def service_env(component: str, redis_url: str, database_url: str) -> tuple[dict[str, str], list[str], int, int]:
    """Environment, arguments, the port serving /healthz and /readyz, and the ops port."""
    ops = free_port()
    env = {"CRYPTEX_REDIS_URL": redis_url, "CRYPTEX_DATABASE_URL": database_url,
           "CRYPTEX_OPS_HOST": "127.0.0.1", "CRYPTEX_OPS_PORT": str(ops),
           "CRYPTEX_INSTANCE_ID": f"images-{component}"}
    args: list[str] = []
    probe = ops
    if component in ("api", "wsgateway"):
        probe = free_port()
        env |= {"CRYPTEX_HOST": "127.0.0.1", "CRYPTEX_PORT": str(probe)}
    if component == "api":
        env["CRYPTEX_ADMIN_TOKEN"] = ADMIN
    if component == "engine":
        args = ["--market", SOL]
    return env, args, probe, ops


@pytest.fixture
async def database(postgres: PostgresServer, images: Images) -> str:
    """A fresh database with dbproc's schema, applied by the dbproc image itself (`migrate`)."""
    url = await new_database(postgres)
    proc = await asyncio.to_thread(
        podman, "run", "--rm", "--network=host", "--read-only", "--cap-drop=ALL",
        "--security-opt=no-new-privileges", "--user=10001:10001", "-e", f"CRYPTEX_DATABASE_URL={url}",
        images["dbproc"], "migrate", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return url


@pytest.mark.parametrize("component", ["api", "engine", "wsgateway", "dbproc"])
async def test_image_runs_hardened_and_answers_health_ready_and_metrics(
        component: str, images: Images, redis_srv: RedisServer, redis_client: aioredis.Redis,
        database: str) -> None:
    await register_markets(redis_client)
    env, args, probe, ops = service_env(component, redis_srv.url, database)
    with started(images[component], env=env, args=args) as ctr:
        ready = await asyncio.to_thread(wait_http, ctr, f"http://127.0.0.1:{probe}/readyz")
        record(f"{component} image ready (podman run -> /readyz 200)", f"{ready:.1f} s")
        assert http_get(f"http://127.0.0.1:{probe}/healthz")[0] == 200
        code, metrics = http_get(f"http://127.0.0.1:{ops}/metrics")
        assert code == 200 and "\n# TYPE cryptex_" in "\n" + metrics, metrics[:500]
        if probe != ops:  # /metrics is never on the public port
            assert http_get(f"http://127.0.0.1:{probe}/metrics")[0] == 404
        assert ctr.uids() == (10001, 10001)
        assert ctr.running()
        denied = ctr.exec("python", "-c", "open('/venv/x', 'w')")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
        caps = ctr.exec("python", "-c", "print(open('/proc/self/status').read())").stdout
        assert {line.split()[1] for line in caps.splitlines() if line.startswith("Cap")} == {"0000000000000000"}


@pytest.fixture
async def api_and_engine(images: Images, redis_srv: RedisServer, redis_client: aioredis.Redis,
                         database: str) -> AsyncIterator[tuple[str, Container]]:
    await register_markets(redis_client)
    env, _, port, _ = service_env("api", redis_srv.url, database)
    engine_env, engine_args, engine_ops, _ = service_env("engine", redis_srv.url, database)
    engine = await asyncio.to_thread(run, images["engine"], env=engine_env, args=engine_args)
    api = None
    try:
        api = await asyncio.to_thread(run, images["api"], env=env)
        await asyncio.to_thread(wait_http, engine, f"http://127.0.0.1:{engine_ops}/readyz")
        await asyncio.to_thread(wait_http, api, f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}", engine
    finally:
        for ctr in (api, engine):
            if ctr is not None:
                await asyncio.to_thread(ctr.remove)


async def test_engine_image_matches_a_crossing_pair_placed_through_the_api_image(
        api_and_engine: tuple[str, Container]) -> None:
    url, engine = api_and_engine
    async with CryptexClient(url, admin_token=ADMIN) as admin:
        seller = await admin.new_funded_user({"SOL": "10"}, tx_prefix="images-")
        buyer = await admin.new_funded_user({"USDC": "10000"}, tx_prefix="images-")
        r = await seller.place_order(side="sell", type="limit", price="100", quantity="2", market=SOL)
        assert r.status == 200 and r.body["order"]["status"] == "new", r
        r = await buyer.place_order(side="buy", type="limit", price="101", quantity="3", market=SOL)
        assert r.status == 200, r
        order, (fill,) = r.body["order"], r.body["fills"]
        assert order["status"] == "partially_filled" and order["executedQty"] == "2.000"
        assert fill["price"] == "100.00" and fill["quantity"] == "2.000" and fill["liquidity"] == "taker"
        # The engine settled it: 200 USDC minus the 10 bps maker fee, 2 SOL minus 20 bps taker fee.
        assert (await seller.balance_map())["USDC"]["available"] == "199.800000"
        assert (await buyer.balance_map())["SOL"]["available"] == "1.996000000"
        for _ in range(100):  # the engine publishes the book after its batch
            depth = await admin.depth(SOL)
            if depth.status == 200 and depth.body.get("bids"):
                break
            await asyncio.sleep(0.1)
        assert depth.body["bids"][0][:2] == ["101.00", "1.000"] and depth.body["asks"] == [], depth
    assert engine.running()


async def test_operator_image_logs_in_and_creates_the_engine_deployment(
        images: Images, kmock: Any, redis_srv: RedisServer, redis_client: aioredis.Redis) -> None:
    """The operator image against kmock's in-memory API server (over the host network):
    kopf logs in with CRYPTEX_K8S_SERVER, discovers the resources, watches Markets; a Market
    created through the API server gets its engine Deployment and a Trading status."""
    R = kmock.ResourceInfo
    kmock.resources["cryptex.io/v1alpha1/markets"] = R(
        kind="Market", namespaced=True, subresources={"status"},
        verbs={"list", "watch", "get", "patch", "create", "delete"})
    kmock.resources["apps/v1/deployments"] = R(kind="Deployment", namespaced=True,
                                               verbs={"list", "watch", "get", "create", "patch", "delete"})
    kmock.resources["v1/namespaces"] = R(kind="Namespace", namespaced=False, verbs={"list", "watch", "get"})
    kmock.resources["v1/events"] = R(kind="Event", namespaced=True, verbs={"create"})
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = R(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch", "get"})
    # With peering, as the chart runs it (cluster-wide here: kmock cannot list namespaces,
    # which a namespaced kopf operator observes).
    kmock.resources["kopf.dev/v1/clusterkopfpeerings"] = R(
        kind="ClusterKopfPeering", namespaced=False, verbs={"list", "watch", "get", "patch", "create"})
    async with kmock.post("/apis/kopf.dev/v1/clusterkopfpeerings", json={
            "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
            "metadata": {"name": "cryptex-operator"}}) as r:
        assert r.status in (200, 201), await r.text()
    liveness = free_port()
    env = {"CRYPTEX_K8S_SERVER": str(kmock.url).rstrip("/"), "CRYPTEX_REDIS_URL": redis_srv.url,
           "CRYPTEX_PEERING_NAME": "cryptex-operator",
           "CRYPTEX_LIVENESS_PORT": str(liveness),
           "CRYPTEX_ENGINE_IMAGE": images["engine"], "CRYPTEX_RELEASE": "cryptex"}
    spec = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == SOL)
    market = {"apiVersion": "cryptex.io/v1alpha1", "kind": "Market",
              "metadata": {"name": "sol-usdc", "namespace": "cryptex", "uid": "uid-sol-usdc",
                           "generation": 1, "resourceVersion": "1"},
              "spec": spec.to_wire()}
    with started(images["operator"], env=env) as ctr:
        # kmock serves from this event loop: wait without blocking it.
        await asyncio.to_thread(wait_http, ctr, f"http://127.0.0.1:{liveness}/healthz")
        async with kmock.post("/apis/cryptex.io/v1alpha1/namespaces/cryptex/markets", json=market) as r:
            assert r.status in (200, 201), await r.text()
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                dep = kmock.objects["apps/v1/deployments", "cryptex", "engine-sol-usdc"].raw
                status = kmock.objects["cryptex.io/v1alpha1/markets", "cryptex", "sol-usdc"].raw.get("status")
                if status and status.get("phase") == "Trading":
                    break
            except KeyError:
                pass
            assert ctr.running(), ctr.logs()
            assert asyncio.get_running_loop().time() < deadline, ctr.logs()
            await asyncio.sleep(0.2)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == images["engine"] and container["args"] == ["--market", SOL]
        registered = await get_market(redis_client, SOL)
        assert registered is not None and registered.to_wire() == spec.to_wire()
        assert ctr.uids() == (10001, 10001)

