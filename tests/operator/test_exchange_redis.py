"""The operator's Redis side against a real Redis: registry writes, configure commands,
and the drain signals (book depth, the engine group's lag and pending entries)."""

from __future__ import annotations

import orjson
import pytest
import redis.asyncio as aioredis

from cryptex_common import keys, registry
from cryptex_common.markets import MarketSpec, MarketState
from cryptex_common.messages import COMMAND_ADAPTER
from cryptex_operator import exchange
from tests.operator.test_operator_kmock import SOL

SYMBOL = "SOL/USDC"


async def states(redis: aioredis.Redis) -> list[str]:
    entries = await redis.xrange(keys.commands_stream(SYMBOL))
    return [COMMAND_ADAPTER.validate_json(f[b"c"]).state for _, f in entries]


async def test_register_is_idempotent_and_refuses_immutable_changes(
        redis_client: aioredis.Redis) -> None:
    spec = MarketSpec.model_validate(SOL)
    assert await exchange.register(redis_client, spec) is True
    assert await exchange.register(redis_client, spec) is False  # replay: nothing new
    assert await states(redis_client) == ["open"]
    with pytest.raises(registry.ImmutableFieldChanged):
        await exchange.register(redis_client, spec.model_copy(update={"tick_size": "0.1"}))


async def test_drain_moves_forward_only(redis_client: aioredis.Redis) -> None:
    await exchange.register(redis_client, MarketSpec.model_validate(SOL))
    assert await exchange.begin_drain(redis_client, SYMBOL) is True
    assert await exchange.begin_drain(redis_client, SYMBOL) is False
    assert await exchange.set_state(redis_client, SYMBOL, MarketState.CLOSED) is True
    assert await exchange.begin_drain(redis_client, SYMBOL) is False  # never reopens
    assert await states(redis_client) == ["open", "cancelOnly", "closed"]
    assert await exchange.begin_drain(redis_client, "BTC/USDC") is False  # unknown market


async def test_drain_state_reads_book_and_engine_group(redis_client: aioredis.Redis) -> None:
    stream = keys.commands_stream(SYMBOL)
    assert await exchange.drain_state(redis_client, SYMBOL) == exchange.Drain(0, 0, 0)
    await exchange.register(redis_client, MarketSpec.model_validate(SOL))
    # A stream but no engine group yet: no engine ever ran, nothing waits for one.
    assert (await exchange.drain_state(redis_client, SYMBOL)).commands_pending == 0
    await redis_client.xgroup_create(stream, keys.ENGINE_GROUP, id="0")
    await redis_client.set(keys.depth_key(SYMBOL), orjson.dumps(
        {"bids": [["1", "1"], ["0.9", "2"]], "asks": [["1.1", "1"]]}))
    state = await exchange.drain_state(redis_client, SYMBOL)
    assert (state.bid_levels, state.ask_levels, state.commands_pending) == (2, 1, 1)
    assert not state.book_empty
    read = await redis_client.xreadgroup(keys.ENGINE_GROUP, "e", {stream: ">"})
    assert (await exchange.drain_state(redis_client, SYMBOL)).commands_pending == 1  # pending
    await redis_client.xack(stream, keys.ENGINE_GROUP, read[0][1][0][0])
    await redis_client.set(keys.depth_key(SYMBOL), orjson.dumps({"bids": [], "asks": []}))
    state = await exchange.drain_state(redis_client, SYMBOL)
    assert state.book_empty and state.commands_pending == 0


async def test_last_sequence(redis_client: aioredis.Redis) -> None:
    assert await exchange.last_sequence(redis_client, SYMBOL) is None
    await redis_client.set(keys.settled_seq_key(SYMBOL), 918273)
    assert await exchange.last_sequence(redis_client, SYMBOL) == 918273
