"""The operator's Redis side against a real Redis: registry writes, configure commands,
and the drain (book depth, commands not yet settled, the state rule)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from cryptex_common import keys, registry
from cryptex_common.markets import MarketSpec, MarketState
from cryptex_common.messages import COMMAND_ADAPTER
from cryptex_operator import exchange
from tests.operator.test_operator_kmock import SOL
from tests.support.depth_book import store_book

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


async def settle_everything(redis: aioredis.Redis) -> None:
    info = await redis.xinfo_stream(keys.commands_stream(SYMBOL))
    await redis.set(keys.settled_seq_key(SYMBOL), info["entries-added"])


async def test_drain_step_closes_only_when_settled_and_empty(redis_client: aioredis.Redis) -> None:
    """issue 11 defect 3: cancelOnly first; closed only once every command is settled and the
    book is empty; done only once `closed` is settled too."""
    await exchange.register(redis_client, MarketSpec.model_validate(SOL))
    state = await exchange.drain_step(redis_client, SYMBOL, wait_s=0)
    assert (state.state, state.commands_pending, state.done) == ("cancelOnly", 2, False)
    assert await exchange.drain_step(redis_client, SYMBOL, wait_s=0) == state  # a retry changes nothing
    await settle_everything(redis_client)
    await store_book(redis_client, SYMBOL, 1, [["1", "1"]], [])
    state = await exchange.drain_step(redis_client, SYMBOL, wait_s=0)
    assert (state.state, state.bid_levels, state.done) == ("cancelOnly", 1, False)
    await store_book(redis_client, SYMBOL, 2, [], [])
    state = await exchange.drain_step(redis_client, SYMBOL, wait_s=0)
    assert (state.state, state.commands_pending, state.done) == ("closed", 1, False)
    await settle_everything(redis_client)
    state = await exchange.drain_step(redis_client, SYMBOL, wait_s=0)
    assert state.done and state.state == "closed"
    assert await states(redis_client) == ["open", "cancelOnly", "closed"]  # never reopened
    assert (await exchange.drain_step(redis_client, "BTC/USDC", wait_s=0)).done  # unknown market


async def test_drain_step_sends_a_closed_market_with_orders_back_to_cancel_only(
        redis_client: aioredis.Redis) -> None:
    """issue 11 defect 3: orders resting in a closed market, every command settled: back to
    cancelOnly (a closed market refuses cancels), and closed again once the book is empty."""
    await exchange.register(redis_client, MarketSpec.model_validate({**SOL, "state": "closed"}))
    await settle_everything(redis_client)
    await store_book(redis_client, SYMBOL, 1, [["1", "1"]], [])
    state = await exchange.drain_step(redis_client, SYMBOL, wait_s=0)
    assert not state.done and await states(redis_client) == ["closed", "cancelOnly"]
    await settle_everything(redis_client)
    await store_book(redis_client, SYMBOL, 2, [], [])
    await exchange.drain_step(redis_client, SYMBOL, wait_s=0)
    await settle_everything(redis_client)
    assert (await exchange.drain_step(redis_client, SYMBOL, wait_s=0)).done
    assert await states(redis_client) == ["closed", "cancelOnly", "closed"]


async def test_pending_counts_every_entry_not_settled_nor_skipped(redis_client: aioredis.Redis) -> None:
    """Pending = entries ever added - settled sequence - entries the engine skipped (dead
    letters with rejected=0); trimming the stream changes nothing; no consumer group needed."""
    stream = keys.commands_stream(SYMBOL)
    assert await exchange.commands_pending(redis_client, SYMBOL) == 0  # no stream
    await exchange.register(redis_client, MarketSpec.model_validate(SOL))
    ids = [await redis_client.xadd(stream, {"c": "{}"}) for _ in range(3)]
    assert await exchange.commands_pending(redis_client, SYMBOL) == 4
    await redis_client.set(keys.settled_seq_key(SYMBOL), 2)
    assert await exchange.commands_pending(redis_client, SYMBOL) == 2
    dead = keys.dead_letter_stream(SYMBOL)
    await redis_client.xadd(dead, {"source": stream, "id": ids[1], "error": "x", "rejected": "0"}, id=ids[1])
    assert await exchange.commands_pending(redis_client, SYMBOL) == 1
    await redis_client.xadd(dead, {"source": stream, "id": ids[2], "error": "x", "rejected": "1"}, id=ids[2])
    assert await exchange.commands_pending(redis_client, SYMBOL) == 1  # took a sequence number
    await redis_client.xtrim(stream, minid=ids[2])
    assert await exchange.commands_pending(redis_client, SYMBOL) == 1
    await redis_client.set(keys.settled_seq_key(SYMBOL), 3)
    assert await exchange.commands_pending(redis_client, SYMBOL) == 0


async def test_drain_state_reads_book_state_and_pending(redis_client: aioredis.Redis) -> None:
    assert await exchange.drain_state(redis_client, SYMBOL) == exchange.Drain(None, 0, 0, 0)
    await exchange.register(redis_client, MarketSpec.model_validate(SOL))
    await store_book(redis_client, SYMBOL, 1, [["1", "1"], ["0.9", "2"]], [["1.1", "1"]])
    state = await exchange.drain_state(redis_client, SYMBOL)
    assert state == exchange.Drain(MarketState.OPEN, 2, 1, 1) and not state.book_empty


async def test_last_sequence(redis_client: aioredis.Redis) -> None:
    assert await exchange.last_sequence(redis_client, SYMBOL) is None
    await redis_client.set(keys.settled_seq_key(SYMBOL), 918273)
    assert await exchange.last_sequence(redis_client, SYMBOL) == 918273
