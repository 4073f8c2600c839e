"""Gateway fixtures: a real gateway (in-process aiohttp server) on the session's real Redis,
with the SOL/USDC market registered, and small helpers for WebSocket clients."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from cryptex_common import keys
from cryptex_common.auth import WS_AUTH_PATH, sign
from cryptex_common.markets import MarketSpec
from cryptex_common.registry import register_market
from cryptex_wsgateway.gateway import Gateway
from cryptex_wsgateway.settings import WsSettings
from tests.support.eventually import eventually

SOL = MarketSpec.model_validate({
    "symbol": "SOL/USDC", "baseAsset": "SOL", "baseDecimals": 9, "quoteAsset": "USDC",
    "quoteDecimals": 6, "tickSize": "0.01", "lotSize": "0.001", "minQuantity": "0.001",
    "maxQuantity": "100000", "minNotional": "1",
})

TEST_LIMITS: dict[str, Any] = {
    "max_streams": 5,
    "max_frame_bytes": 2048,
    "rate_per_s": 20,
    "rate_burst": 30,
    "flood_close_after": 5,
    "max_buffer_bytes": 64 * 1024,
    "max_queue_messages": 500,
    "resync_wait_s": 0.3,
    "idle_timeout_s": 300,
}


class GatewayUnderTest:
    def __init__(self, gateway: Gateway, server: TestServer) -> None:
        self.gateway = gateway
        self.server = server

    @property
    def ws_url(self) -> str:
        return str(self.server.make_url("/ws"))

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


async def start_gateway(redis_url: str, **overrides: Any) -> GatewayUnderTest:
    settings = WsSettings(redis_url=redis_url, **{**TEST_LIMITS, **overrides})
    gw = Gateway(settings, aioredis.Redis.from_url(redis_url))
    await gw.start()
    await eventually(lambda: gw.ready and all(t.live for t in gw.trackers.values()), 5, interval_s=0.01)
    server = TestServer(gw.app())
    await server.start_server()
    return GatewayUnderTest(gw, server)


async def stop_gateway(g: GatewayUnderTest) -> None:
    await g.server.close()
    await g.gateway.stop()
    await g.gateway.redis.aclose()


@pytest.fixture
async def make_gateway(redis_client: aioredis.Redis, redis_srv: Any) -> AsyncIterator[Callable]:
    await register_market(redis_client, SOL)
    started: list[GatewayUnderTest] = []

    async def make(**overrides: Any) -> GatewayUnderTest:
        g = await start_gateway(redis_srv.url, **overrides)
        started.append(g)
        return g

    yield make
    for g in started:
        await stop_gateway(g)


@pytest.fixture
async def gw(make_gateway: Callable) -> GatewayUnderTest:
    return await make_gateway()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s



async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> Any:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def request(ws: aiohttp.ClientWebSocketResponse, method: str, params: Any = None,
                  rid: Any = 1) -> Any:
    body: dict[str, Any] = {"method": method, "id": rid}
    if params is not None:
        body["params"] = params
    await ws.send_str(orjson.dumps(body).decode())
    return await recv(ws)


async def subscribe(ws: aiohttp.ClientWebSocketResponse, *streams: str, rid: int = 1) -> Any:
    reply = await request(ws, "SUBSCRIBE", list(streams), rid)
    assert reply == {"id": rid, "result": None}, reply
    return reply


async def create_user(redis: aioredis.Redis, user_id: str) -> tuple[str, str]:
    api_key, secret = f"key-{user_id}", f"secret-{user_id}"
    await redis.set(keys.api_key_key(api_key), user_id)
    await redis.hset(keys.user_key(user_id), mapping={
        "apiKey": api_key, "apiSecret": secret, "createdMs": 0})
    return api_key, secret


def auth_params(api_key: str, secret: str, ts: int | None = None) -> dict[str, Any]:
    ts = int(time.time() * 1000) if ts is None else ts
    return {"apiKey": api_key, "timestamp": ts, "signature": sign(secret, ts, "GET", WS_AUTH_PATH)}


# --- a raw client that never reads (a slow consumer) -----------------------------------------
def client_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    header = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_ws_connect(port: int, rcvbuf: int = 4096) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s
