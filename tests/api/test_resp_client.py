"""cryptex_common.resp against a real Redis: pipelined calls answered in order, coalesced
writes, EVAL after NOSCRIPT, RedisError (answered 503 by the API) when Redis goes away,
and a working connection again when it is back; the reply subscription delivers pushes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from cryptex_common import resp
from tests.support.servers import redis_server, wait_for_port


async def test_concurrent_calls_share_writes_and_get_their_own_replies(redis_client: aioredis.Redis) -> None:
    url = redis_client.connection_pool.connection_kwargs
    client = resp.RespClient(f"redis://{url['host']}:{url['port']}/0")
    try:
        results = await asyncio.gather(*(client.call("INCRBY", "n", i) for i in range(1, 101)))
        assert results == [sum(range(1, k + 1)) for k in range(1, 101)]  # in the order asked
        assert int(await redis_client.get("n")) == sum(range(1, 101))
        with pytest.raises(ResponseError):
            await client.call("INCRBY", "n", "x")
        assert await client.call("GET", "n") == str(sum(range(1, 101))).encode()  # still in step
    finally:
        await client.aclose()


async def test_evalsha_falls_back_to_eval_on_noscript(redis_client: aioredis.Redis) -> None:
    url = redis_client.connection_pool.connection_kwargs
    client = resp.RespClient(f"redis://{url['host']}:{url['port']}/0")
    source = "return {KEYS[1], ARGV[1]}"
    try:
        await redis_client.script_flush()
        assert await client.evalsha("0" * 40, source, ["k"], ["v"]) == [b"k", b"v"]
    finally:
        await client.aclose()


async def test_redis_away_is_a_redis_error_and_back_works_again() -> None:
    """The same client: calls fail with a RedisError while Redis is away (none hangs),
    work again once it is back on its port, and find its script cache empty (EVAL)."""
    with redis_server() as server:
        client = resp.RespClient(server.url, timeout_s=2)
        assert await client.evalsha("0" * 40, "return 1", [], []) == 1
        server.stop()
        for _ in range(2):
            with pytest.raises(RedisError):
                await client.call("PING")
        again = subprocess.Popen([str(shutil.which("redis-server")), "--port", str(server.port), "--bind",
                                  "127.0.0.1", "--save", "", "--dir", server.dir],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(server.port)
            assert await client.call("PING") == b"PONG"
            assert await client.evalsha("0" * 40, "return 2", [], []) == 2
        finally:
            await client.aclose()
            again.terminate()
            again.wait(10)


async def test_subscribe_delivers_messages_and_returns_when_the_connection_ends() -> None:
    with redis_server() as server:
        got: list[list[bytes]] = []
        subscribed = asyncio.Event()
        task = asyncio.create_task(resp.subscribe(server.url, ["a", "b"], got.append, subscribed.set))
        await asyncio.wait_for(subscribed.wait(), 5)
        publisher = aioredis.Redis.from_url(server.url)
        await publisher.publish("b", b"hello")
        await publisher.publish("a", b"[1]")
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert got == [[b"message", b"b", b"hello"], [b"message", b"a", b"[1]"]]
        await publisher.aclose()
        server.stop()
        await asyncio.wait_for(task, 5)  # returns: the caller resubscribes


async def test_pipeline_answers_in_order_with_errors_in_place_decoded(redis_client: aioredis.Redis) -> None:
    url = redis_client.connection_pool.connection_kwargs
    client = resp.RespClient(f"redis://{url['host']}:{url['port']}/0", decode=True)
    try:
        await redis_client.xadd("s", {"f": "v", "g": "w"}, id="1-1")
        got = await client.pipeline(("SET", "p", "x"), ("INCR", "p"), ("GET", "p"),
                                    ("XREAD", "COUNT", 10, "STREAMS", "s", "0-0"))
        assert got[0] == "OK" and isinstance(got[1], ResponseError) and got[2] == "x"
        assert got[3] == [["s", [["1-1", ["f", "v", "g", "w"]]]]]
    finally:
        await client.aclose()


async def test_a_blocking_read_needs_a_timeout_above_its_block_time(redis_client: aioredis.Redis) -> None:
    """The watchdog fails a call unanswered after `timeout_s`, a blocking XREAD included:
    the engine's client is given block time + 5 s."""
    url = redis_client.connection_pool.connection_kwargs
    ok = resp.RespClient(f"redis://{url['host']}:{url['port']}/0", timeout_s=3)
    short = resp.RespClient(f"redis://{url['host']}:{url['port']}/0", timeout_s=0.2)
    try:
        assert await ok.call("XREAD", "COUNT", 1, "BLOCK", 300, "STREAMS", "empty", "$") is None
        with pytest.raises(RedisError):
            await short.call("XREAD", "COUNT", 1, "BLOCK", 5000, "STREAMS", "empty", "$")
    finally:
        await ok.aclose()
        await short.aclose()


def test_only_plain_urls_are_supported() -> None:
    assert resp.supports("redis://127.0.0.1:6379/0") and resp.supports("unix:///tmp/redis.sock")
    assert not resp.supports("rediss://example:6380/0")
