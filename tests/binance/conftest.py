"""The real stack for the Binance facade's conformance tests: API, both engines and dbproc
as processes, a Redis and a PostgreSQL started on free ports for the run. Real clients
(ccxt, python-binance, binance-connector) talk to it with only their base URLs changed.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_launcher.stack import Stack
from tests.e2e.conftest import ADMIN, make_stack, register_all
from tests.support.eventually import eventually_sync
from tests.support.servers import PostgresServer, RedisServer, new_database, redis_server

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class User:
    user_id: str
    api_key: str
    api_secret: str


@dataclass(frozen=True)
class Live:
    stack: Stack
    redis_url: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.stack.api_port}"

    async def afund(self, funds: dict[str, str]) -> User:
        async with CryptexClient(self.base, admin_token=ADMIN) as admin:
            client = await admin.new_funded_user(funds, tx_prefix=uuid.uuid4().hex[:8])
            return User(client.user_id, str(client.api_key), str(client.api_secret))  # type: ignore[attr-defined]

    def fund(self, funds: dict[str, str]) -> User:
        return asyncio.run(self.afund(funds))

    async def anative(self, user: User, method: str, path: str, **kw: Any) -> Any:
        async with CryptexClient(self.base, user.api_key, user.api_secret) as c:
            return await c.request(method, path, **kw)

    def balances(self, user: User) -> dict[str, dict[str, str]]:
        async def run() -> dict[str, dict[str, str]]:
            async with CryptexClient(self.base, user.api_key, user.api_secret) as c:
                return await c.balance_map()
        return asyncio.run(run())

    def stream_lengths(self) -> dict[str, int]:
        async def run() -> dict[str, int]:
            r = aioredis.Redis.from_url(self.redis_url)
            try:
                return {s.symbol: await r.xlen(f"MESSAGES:{{{s.tag}}}") for s in self.stack.markets}
            finally:
                await r.aclose()
        return asyncio.run(run())


@pytest.fixture(scope="package")
def binance_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="package")
def live(binance_redis: RedisServer, postgres: PostgresServer) -> Iterator[Live]:
    database_url = asyncio.run(new_database(postgres))
    stack = make_stack(binance_redis.url, database_url, with_dbproc=True, extra_env={
        "CRYPTEX_RATE_LIMIT_PER_S": "1000", "CRYPTEX_RATE_LIMIT_BURST": "2000",
        "CRYPTEX_PUBLIC_RATE_LIMIT_PER_S": "1000", "CRYPTEX_PUBLIC_RATE_LIMIT_BURST": "2000",
    })
    asyncio.run(register_all(binance_redis.url, stack))
    stack.start_all()
    yield Live(stack, binance_redis.url)
    codes = stack.stop_all()
    shutil.rmtree(stack.state_dir, ignore_errors=True)
    assert all(c in (0, None) for c in codes.values()), codes


@pytest.fixture(autouse=True)
def spec_checked() -> Iterator[None]:
    """Every facade answer a test's clients received validates against Binance's spec."""
    from tests.binance.spec_check import RECORDER

    RECORDER.drain()
    yield
    RECORDER.check()


def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    """Poll `check` until it returns something truthy (dbproc commits asynchronously)."""
    return eventually_sync(check, timeout_s, interval_s=0.2)
