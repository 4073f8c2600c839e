"""The facade's hold on the gateway's data path (an in-process gateway on a real Redis): taps
on native topics and followed users exist exactly while some Binance socket needs them, and
a listen-key socket registers its user for the engines like a native private SUBSCRIBE."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from cryptex_common import keys
from cryptex_common.registry import register_market
from tests.support.eventually import eventually
from tests.wsgateway.conftest import SOL, create_user, start_gateway, stop_gateway

pytestmark = pytest.mark.slow


def signed(api_key: str, secret: str) -> dict[str, Any]:
    params: dict[str, Any] = {"apiKey": api_key, "timestamp": int(time.time() * 1000)}
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    return {**params, "signature": hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()}


async def test_taps_and_followed_users_last_exactly_as_long_as_sockets(
        redis_client: aioredis.Redis, redis_srv: Any) -> None:
    await register_market(redis_client, SOL)
    api_key, secret = await create_user(redis_client, "77")
    await redis_client.set(keys.listen_key("ab12"), "77", ex=60)
    g = await start_gateway(redis_srv.url)
    gw = g.gateway
    base = str(g.server.make_url("/binance"))
    try:
        async with aiohttp.ClientSession() as s:
            combined = await s.ws_connect(f"{base}/stream?streams=solusdc@depth/solusdc@trade/!ticker@arr/ab12")
            assert "77" in gw.followed_users  # the handshake completes once the user is followed
            assert await redis_client.zscore(keys.subscribers_key(keys.user_tag("77")), "77") is not None
            live = await s.ws_connect(f"{base}/ws/0")
            await live.send_json({"method": "SUBSCRIBE", "params": ["solusdc@kline_1m", "solusdc@depth5"], "id": 1})
            assert await live.receive_json(timeout=5) == {"result": None, "id": 1}
            api = await s.ws_connect(f"{base}/ws-api/v3")
            await api.send_json({"id": "s", "method": "userDataStream.subscribe.signature",
                                 "params": signed(api_key, secret)})
            assert (await api.receive_json(timeout=5))["result"] == {"subscriptionId": 0}
            assert set(gw.publisher.taps) == {
                "depth@SOL/USDC", "trades@SOL/USDC", "ticker@SOL/USDC", "kline_1m@SOL/USDC",
                "user.orders#77", "user.fills#77", "user.balances#77", "user.transfers#77"}
            await combined.close()
            await asyncio.sleep(0.2)
            # the WS API socket still follows user 77; the live socket still needs depth
            assert "77" in gw.followed_users and "depth@SOL/USDC" in gw.publisher.taps
            assert "trades@SOL/USDC" not in gw.publisher.taps
            await live.send_json({"method": "UNSUBSCRIBE", "params": ["solusdc@depth5"], "id": 2})
            while (reply := await live.receive_json(timeout=5)).get("id") != 2:  # skip the book
                assert "lastUpdateId" in reply
            assert reply == {"result": None, "id": 2}
            assert set(gw.publisher.taps) == {"kline_1m@SOL/USDC", "user.orders#77", "user.fills#77",
                                              "user.balances#77", "user.transfers#77"}
            await api.close()
            await live.close()
            await eventually(lambda: not gw.publisher.taps and not gw.followed_users)
            assert keys.user_channel("77").encode() not in gw.upstream.routes
    finally:
        await stop_gateway(g)
