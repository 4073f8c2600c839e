"""The one Redis client factory: every connection is named after its service, a pooled
client never opens more than its connections and gives up after its wait."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from cryptex_common import redis_client
from tests.support.servers import RedisServer


async def test_connections_carry_the_service_name(redis_srv: RedisServer) -> None:
    client = redis_client.connect(redis_srv.url, "api")
    try:
        await client.ping()
        names = [c["name"] for c in await client.client_list()]
        assert "cryptex-api" in names
    finally:
        await client.aclose()


async def test_decode_answers_text(redis_srv: RedisServer) -> None:
    raw, text = redis_client.connect(redis_srv.url, "t1"), redis_client.connect(redis_srv.url, "t2", decode=True)
    try:
        await raw.set("factory:k", "v")
        assert await raw.get("factory:k") == b"v" and await text.get("factory:k") == "v"
    finally:
        await raw.aclose()
        await text.aclose()


async def test_a_full_pool_waits_then_gives_up(redis_srv: RedisServer) -> None:
    client = redis_client.connect(redis_srv.url, "pool", max_connections=1, wait_s=0.2)
    try:
        blocked = asyncio.create_task(client.blpop(["factory:never"], timeout=2))
        await asyncio.sleep(0.1)  # the one connection is now held by the blocking pop
        with pytest.raises(RedisConnectionError):
            await client.ping()
        blocked.cancel()
    finally:
        await client.aclose()
