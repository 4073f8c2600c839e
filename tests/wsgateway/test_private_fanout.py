"""The gateway's half of issue 11 defect 7 ("private updates are lost right after SUBSCRIBE"),
against real Redis, the engine's side played by the test.

Before a SUBSCRIBE naming a private stream is acknowledged, the user must be registered in
`ws:private-subscribers` with a future expiry, and Redis must have confirmed the gateway's
subscription to `user@<id>`: an event published right after the acknowledgement must arrive.
The registration must not lapse while the socket lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from cryptex_common import keys
from cryptex_wsgateway import gateway as gateway_module
from tests.support.eventually import eventually
from tests.support.servers import RedisServer
from tests.wsgateway.conftest import (
    GatewayUnderTest,
    auth_params,
    create_user,
    recv,
    request,
    start_gateway,
    stop_gateway,
    subscribe,
)


def subs(user_id: str) -> str:
    """The private-subscribers set of `user_id`'s ledger bucket."""
    return keys.subscribers_key(keys.user_tag(user_id))


class DelayProxy:
    """A TCP proxy to Redis that holds every client-to-server chunk for `delay` seconds (in
    order), as a congested link would. Server-to-client bytes pass at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for t in (self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)):
            task = asyncio.create_task(t)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, delayed: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65_536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        dst.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def slow_link_gateway(
    redis_srv: RedisServer, make_gateway: Any
) -> AsyncIterator[tuple[GatewayUnderTest, DelayProxy]]:
    """A gateway whose Redis connections go through a DelayProxy (delay 0 until a test sets it)."""
    await make_gateway()  # registers the market (and is stopped by the fixture)
    proxy = DelayProxy(redis_srv.port)
    g = await start_gateway(await proxy.start())
    yield g, proxy
    proxy.delay = 0
    await stop_gateway(g)
    await proxy.stop()


async def redis_now_ms(redis: aioredis.Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def test_event_published_right_after_the_ack_arrives_on_a_slow_redis_link(
    slow_link_gateway: tuple[GatewayUnderTest, DelayProxy], session: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
) -> None:
    """issue 11 defect 7: the SUBSCRIBE ack was sent once the pub/sub SUBSCRIBE was written,
    not confirmed: on a slow link an event published right after the ack was lost."""
    gw, proxy = slow_link_gateway
    key, secret = await create_user(redis_client, "41")
    async with session.ws_connect(gw.ws_url) as ws:
        assert (await request(ws, "AUTH", auth_params(key, secret)))["result"] == {"userId": "41"}
        proxy.delay = 0.3
        await subscribe(ws, "user.orders", "user.fills", rid=2)
        assert await redis_client.zscore(subs("41"), "41") > await redis_now_ms(redis_client)
        order = {"orderId": "1", "status": "new"}
        receivers = await redis_client.publish(keys.user_channel("41"), orjson.dumps({"type": "order", "data": order}))
        assert receivers == 1
        assert await recv(ws) == {"stream": "user.orders", "data": order}


async def test_private_subscribe_registers_with_a_future_expiry_by_redis_clock(
    gw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """issue 11 defect 7: at the ack, the user is registered with an expiry a full TTL ahead
    of Redis's clock; a later expiry written by another gateway is never shortened, and
    expired members are cleaned up."""
    key, secret = await create_user(redis_client, "42")
    far = await redis_now_ms(redis_client) + 3_600_000
    await redis_client.zadd(subs("43"), {"43": far})
    await redis_client.zadd(subs("298"), {"298": 1})  # expired, in user 42's bucket
    async with session.ws_connect(gw.ws_url) as ws:
        await request(ws, "AUTH", auth_params(key, secret))
        before = await redis_now_ms(redis_client)
        await subscribe(ws, "user.fills", rid=2)
        score = await redis_client.zscore(subs("42"), "42")
        assert score >= before + gateway_module.REGISTRATION_TTL_MS
        [(_, n)] = await redis_client.pubsub_numsub(keys.user_channel("42"))
        assert n == 1
        k43, s43 = await create_user(redis_client, "43")
        async with session.ws_connect(gw.ws_url) as ws43:
            await request(ws43, "AUTH", auth_params(k43, s43))
            await subscribe(ws43, "user.orders", rid=2)
        assert await redis_client.zscore(subs("43"), "43") == far  # GT: not shortened
        assert await redis_client.zscore(subs("298"), "298") is None


async def test_registration_is_renewed_and_never_lapses(
    make_gateway: Any, session: aiohttp.ClientSession, redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """issue 11 defect 7: a live private subscription stays registered past its TTL (the
    renewal runs every refresh interval), and a registration removed from Redis (e.g. a
    Redis restart without persistence) comes back at the next renewal."""
    monkeypatch.setattr(gateway_module, "REGISTRATION_REFRESH_S", 0.2)
    monkeypatch.setattr(gateway_module, "REGISTRATION_TTL_MS", 1_200)
    gw = await make_gateway()
    key, secret = await create_user(redis_client, "44")
    async with session.ws_connect(gw.ws_url) as ws:
        await request(ws, "AUTH", auth_params(key, secret))
        await subscribe(ws, "user.orders", rid=2)
        deadline = time.monotonic() + 3.0  # 2.5 TTLs
        while time.monotonic() < deadline:
            score = await redis_client.zscore(subs("44"), "44")
            assert score is not None and score > await redis_now_ms(redis_client)
            await asyncio.sleep(0.1)
        await redis_client.delete(subs("44"))
        deadline = time.monotonic() + 2
        while await redis_client.zscore(subs("44"), "44") is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await request(ws, "UNSUBSCRIBE", ["user.orders"], 3)
        assert "44" not in gw.gateway.followed_users
    # no socket follows 44 any more: not renewed, it expires (no gateway removes it)
    await asyncio.sleep(1.5)
    score = await redis_client.zscore(subs("44"), "44")
    assert score is None or score < await redis_now_ms(redis_client)


async def test_after_a_pubsub_reconnect_private_subscribe_is_confirmed_again(
    gw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """issue 11 defect 7: a lost pub/sub connection voids the confirmations; a SUBSCRIBE after
    it is acknowledged only once the new connection is subscribed, and existing private
    subscribers are subscribed and registered again."""
    k1, s1 = await create_user(redis_client, "45")
    k2, s2 = await create_user(redis_client, "46")
    async with session.ws_connect(gw.ws_url) as a, session.ws_connect(gw.ws_url) as b:
        await request(a, "AUTH", auth_params(k1, s1))
        await subscribe(a, "user.orders", rid=2)
        await redis_client.delete(subs("44"))
        await redis_client.client_kill_filter(_type="pubsub")
        await request(b, "AUTH", auth_params(k2, s2))
        await subscribe(b, "user.orders", rid=2)  # possibly while the gateway reconnects
        for user, ws in (("45", a), ("46", b)):
            order = {"orderId": user, "status": "new"}
            await eventually(lambda: gw.gateway.pubsub is not None, 5, interval_s=0.01)
            deadline = time.monotonic() + 3
            while not await redis_client.publish(keys.user_channel(user), orjson.dumps(
                    {"type": "order", "data": order})):
                assert user == "45" and time.monotonic() < deadline  # b's ack guaranteed it
                await asyncio.sleep(0.05)
            assert await recv(ws) == {"stream": "user.orders", "data": order}
        deadline = time.monotonic() + 3
        while await redis_client.zscore(subs("45"), "45") is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
