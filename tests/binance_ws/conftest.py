"""The real exchange for the Binance WebSocket facade: API, engines and gateway processes
(the launcher's Stack) on a real Redis, started once for the package; helpers for raw
Binance stream sockets, listen keys and crossing orders."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys
from cryptex_common.binance import LISTEN_KEY_BYTES, LISTEN_KEY_TTL_S
from cryptex_launcher.stack import Stack
from tests.e2e.conftest import ADMIN, make_stack, register_all
from tests.support.servers import RedisServer, redis_server

M = "SOL/USDC"
SYM = "solusdc"


@dataclass
class Exchange:
    stack: Stack
    redis: RedisServer

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.stack.api_port}"

    @property
    def ws(self) -> str:
        """The facade's base: ws://host:port/binance"""
        return f"ws://127.0.0.1:{self.stack.ws_port}/binance"


@pytest.fixture(scope="package")
def exchange() -> Iterator[Exchange]:
    with redis_server() as srv:
        st = make_stack(srv.url, with_wsgateway=True, extra_env={
            "CRYPTEX_HISTORY_ENABLED": "false", "CRYPTEX_RATE_LIMIT_PER_S": "200",
            "CRYPTEX_RATE_LIMIT_BURST": "400"})
        asyncio.run(register_all(srv.url, st))
        try:
            st.start_all()
        except BaseException:  # a service that failed to start: stop the ones that did
            st.stop_all()
            shutil.rmtree(st.state_dir, ignore_errors=True)
            raise
        yield Exchange(st, srv)
        codes = st.stop_all()
        shutil.rmtree(st.state_dir, ignore_errors=True)
        assert codes.get("wsgateway") == 0, st.log_text("wsgateway")[-3000:]


@pytest.fixture
async def admin(exchange: Exchange) -> AsyncIterator[CryptexClient]:
    async with CryptexClient(exchange.api, admin_token=ADMIN) as client:
        yield client


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def redis(exchange: Exchange) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(exchange.redis.url)
    yield client
    await client.aclose()


async def funded(admin: CryptexClient, funds: dict[str, str]) -> CryptexClient:
    return await admin.new_funded_user(funds, uuid.uuid4().hex[:10])


async def listen_key_for(redis: aioredis.Redis, user_id: str) -> str:
    """A listen key as POST /api/v3/userDataStream stores it (keys.listen_key -> user id)."""
    key = secrets.token_hex(LISTEN_KEY_BYTES)
    await redis.set(keys.listen_key(key), user_id, ex=LISTEN_KEY_TTL_S)
    return key


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> Any:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def call(ws: aiohttp.ClientWebSocketResponse, method: str, params: Any = None, rid: Any = 1) -> Any:
    """Send a control request and return its reply (data messages before it are skipped)."""
    body: dict[str, Any] = {"method": method, "id": rid}
    if params is not None:
        body["params"] = params
    await ws.send_str(orjson.dumps(body).decode())
    deadline = time.monotonic() + 5
    while True:
        doc = await recv(ws, max(0.1, deadline - time.monotonic()))
        if isinstance(doc, dict) and doc.get("id") == rid and ("result" in doc or "error" in doc):
            return doc


async def until(ws: aiohttp.ClientWebSocketResponse, pred: Any, timeout: float = 10.0) -> Any:
    """The first message for which `pred` holds (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = await recv(ws, max(0.05, deadline - time.monotonic()))
        if pred(doc):
            return doc


async def cross(admin: CryptexClient, price: str = "100.00", qty: str = "1.000") -> tuple[Any, Any, Any, Any]:
    """Two fresh users: a resting sell, then a buy that takes it. Returns (seller, buyer,
    sell reply body, buy reply body)."""
    seller = await funded(admin, {"SOL": "10"})
    buyer = await funded(admin, {"USDC": "1000"})
    sell = await seller.place_order(side="sell", type="limit", price=price, quantity=qty, market=M)
    buy = await buyer.place_order(side="buy", type="limit", price=price, quantity=qty, market=M)
    assert sell.status == 200 and buy.status == 200, (sell, buy)
    return seller, buyer, sell.body, buy.body
