"""The read side end to end: API + engine + dbproc processes, real Redis and PostgreSQL.
Trades and orders reach PostgreSQL through dbproc and come back through the API."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from cryptex_client import CryptexClient
from cryptex_launcher.redis_cluster import LocalCluster
from cryptex_launcher.stack import Stack
from tests.e2e.conftest import ADMIN, make_stack, register_all
from tests.support.eventually import eventually
from tests.support.servers import PostgresServer, RedisServer, new_database


@pytest.fixture(scope="module")
def history_stack(e2e_redis: RedisServer | LocalCluster, postgres: PostgresServer) -> Iterator[Stack]:
    database_url = asyncio.run(new_database(postgres))
    stack = make_stack(e2e_redis.url, database_url, with_dbproc=True)
    asyncio.run(register_all(e2e_redis.url, stack))
    stack.start_all()
    yield stack
    codes = stack.stop_all()
    shutil.rmtree(stack.state_dir, ignore_errors=True)
    assert all(c in (0, None) for c in codes.values()), codes


@pytest.fixture
async def hist_admin(history_stack: Stack) -> AsyncIterator[CryptexClient]:
    async with CryptexClient(f"http://127.0.0.1:{history_stack.api_port}", admin_token=ADMIN) as c:
        yield c



async def test_fills_orders_and_klines_come_back_from_postgres(hist_admin: CryptexClient) -> None:
    seller = await hist_admin.new_funded_user({"SOL": "10"}, tx_prefix=uuid.uuid4().hex[:6])
    buyer = await hist_admin.new_funded_user({"USDC": "10000"}, tx_prefix=uuid.uuid4().hex[:6])
    await seller.place_order(side="sell", type="limit", price="100", quantity="2", market="SOL/USDC")
    taken = await buyer.place_order(side="buy", type="limit", price="100", quantity="2", market="SOL/USDC")
    assert taken.body["order"]["status"] == "filled"

    async def buyer_fills():  # type: ignore[no-untyped-def]
        r = await buyer.fills(market="SOL/USDC")
        return r.body if r.status == 200 and r.body else None

    fills = await eventually(buyer_fills, 15, interval_s=0.2)
    assert fills and fills[0]["price"] == "100.00" and fills[0]["quantity"] == "2.000"
    assert fills[0]["fee"] == "0.004000000" and fills[0]["liquidity"] == "taker"
    history = await buyer.order_history(market="SOL/USDC")
    assert history.status == 200 and history.body[0]["status"] == "filled"
    klines = await hist_admin.klines("SOL/USDC", "1m")
    assert klines.status == 200 and klines.body
    row = klines.body[-1]
    assert row[1:5] == ["100.00", "100.00", "100.00", "100.00"] and row[8] >= 1


@pytest.mark.parametrize("params", [
    {"interval": "7m"}, {"interval": "1m", "startTime": "5", "endTime": "4"},
    {"interval": "1m", "limit": "100000"}, {"interval": "1m", "startTime": "abc"},
])
async def test_bad_kline_queries_are_400(hist_admin: CryptexClient, params: dict[str, str]) -> None:
    r = await hist_admin.klines("SOL/USDC", **params)
    assert r.status == 400 and r.body["code"] in ("INVALID_FIELD", "MISSING_FIELD"), r
