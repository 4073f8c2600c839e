"""The engine's hot loop on the lean client (cryptex_common.resp, issue 12): the command
XREAD and the pipelined settle call keep redis-py's failure behaviour. A script cache
emptied under the engine (a restarted Redis) is answered by loading the script and settling
alone; Redis going away ends `run` with a RedisError (the process exits and is restarted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from cryptex_common import keys
from cryptex_common.registry import register_market
from cryptex_engine.service import EngineService
from tests.engine.test_service_commands import (
    balance,
    enqueue_raw,
    fund,
    place_json,
    settings,
    sol_spec,
    wait_settled,
)
from tests.support.servers import RedisServer, redis_server

SOL = "SOL/USDC"


@pytest.fixture
async def redis(redis_srv: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


async def test_the_hot_loop_uses_the_lean_client_and_survives_an_empty_script_cache(
        redis: aioredis.Redis, redis_srv: RedisServer) -> None:
    spec = sol_spec()
    await register_market(redis, spec)
    await fund(redis, "alice", "USDC", 100_000_000)
    service = EngineService(settings(redis_srv.url), redis, spec)
    fast = service.fast
    assert fast is not None
    replies: list[Any] = []
    pipeline = fast.pipeline

    async def recorded(*commands: tuple[Any, ...]) -> list[Any]:
        replies.extend(out := await pipeline(*commands))
        return out

    fast.pipeline = recorded  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        for round_ in range(3):
            for _ in range(3):  # several batches: the settle travels pipelined with the next read
                await enqueue_raw(redis, "alice", "USDC", 1_000_000, place_json("alice", 10, 10000, 1_000_000))
                await asyncio.sleep(0.03)
            await wait_settled(redis, service, task)
            if round_ == 0:
                await redis.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
        assert await balance(redis, "alice", "USDC") == (100_000_000 - 9_000_000, 9_000_000)
        assert int(await redis.get(keys.settled_seq_key(SOL)) or 0) == service.core.seq
        assert any(isinstance(r, ResponseError) and str(r).startswith("NOSCRIPT") for r in replies)
        assert any(isinstance(r, list) and r and r[0] == "ok" for r in replies)  # pipelined settles
    finally:
        stop.set()
        await task


async def test_redis_going_away_ends_the_run_with_a_redis_error() -> None:
    with redis_server() as server:
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        spec = sol_spec()
        await register_market(redis, spec)
        service = EngineService(settings(server.url), redis, spec)
        task = asyncio.create_task(service.run(asyncio.Event()))
        try:
            deadline = time.monotonic() + 10
            while not service.ready:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.02)
            server.stop()
            with pytest.raises(RedisError):
                await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
            await redis.aclose()
