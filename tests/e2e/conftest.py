"""End-to-end fixtures: the real API and engine processes (and, where a test asks, the
gateway and dbproc) against a real Redis on a free port, driven over HTTP by the client.
Every e2e test module runs twice: on one Redis and on a Redis Cluster of 3 primaries and
3 replicas (issue 16), through the same code."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cryptex_client import CryptexClient
from cryptex_common import redis_client
from cryptex_common.markets import load_markets_yaml
from cryptex_common.registry import register_market
from cryptex_launcher.redis_cluster import LocalCluster
from cryptex_launcher.stack import Stack, free_port
from tests.support.redis_cluster import redis_cluster
from tests.support.servers import RedisServer, redis_server

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "e2e-admin-token"


def make_stack(redis_url: str, database_url: str = "postgresql://127.0.0.1:1/none", **kw: object) -> Stack:
    specs = load_markets_yaml((ROOT / "markets.yaml").read_text())
    state = Path(tempfile.mkdtemp(prefix="cryptex-e2e-"))
    defaults: dict[str, object] = {"with_wsgateway": False, "with_dbproc": False}
    defaults.update(kw)
    return Stack(redis_url=redis_url, database_url=database_url, markets=specs, state_dir=state,
                 admin_token=ADMIN, api_port=free_port(), ws_port=free_port(), **defaults)  # type: ignore[arg-type]


async def register_all(redis_url: str, stack: Stack) -> None:
    redis = redis_client.connect(redis_url, "tests")
    for spec in stack.markets:
        await register_market(redis, spec)
    await redis.aclose()


@pytest.fixture(scope="module", params=["single", "cluster"])
def e2e_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer | LocalCluster]:
    """One Redis, then a Redis Cluster: both have `.url`."""
    with redis_server() if request.param == "single" else redis_cluster() as server:
        yield server


@pytest.fixture(scope="module")
def order_stack(e2e_redis: RedisServer | LocalCluster) -> Iterator[Stack]:
    stack = make_stack(e2e_redis.url, extra_env={
        "CRYPTEX_HISTORY_ENABLED": "false", "CRYPTEX_RATE_LIMIT_PER_S": "20", "CRYPTEX_RATE_LIMIT_BURST": "40",
    })
    asyncio.run(register_all(e2e_redis.url, stack))
    stack.start_all()
    yield stack
    codes = stack.stop_all()
    failed = {k: v for k, v in codes.items() if v not in (0, None)}
    shutil.rmtree(stack.state_dir, ignore_errors=True)
    assert not failed, f"services did not stop cleanly: {failed}"


@pytest.fixture
async def admin(order_stack: Stack) -> AsyncIterator[CryptexClient]:
    async with CryptexClient(f"http://127.0.0.1:{order_stack.api_port}", admin_token=ADMIN) as client:
        yield client
