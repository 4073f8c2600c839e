"""enqueue_order.lua's replay guard (issue 12): a signed order's signature is checked and
remembered in the same atomic call that locks it (R1), in the user's bucket; a replay is
refused without writing anything."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from cryptex_common import keys
from cryptex_common.ledger import Ledger, LedgerScriptError, enqueue_call, ledger_script_source
from tests.ledger.test_ledger_contract import market_with_funds, written_keys
from tests.ledger.test_ledger_properties import snapshot

SYMBOL = "SOL/USDC"
SIG = "ab" * 32


async def place(ledger: Ledger, units: int = 100, sig: str | None = SIG, coid: str | None = None):  # type: ignore[no-untyped-def]
    return await ledger.enqueue_order(symbol=SYMBOL, user_id="1", lock_asset="USDC", lock_units=units,
                                      command_json=b'{"type":"place"}', record_tail_json=b'"status":"new"}',
                                      client_order_id=coid, signature=sig, replay_guard_ms=10_000)


async def test_ok_sets_the_guard_and_a_replay_changes_nothing(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await market_with_funds(redis_client)
    first = await place(ledger)
    assert first.status == "ok"
    assert 9_000 < await redis_client.pttl(keys.signature_key("1", SIG)) <= 10_000
    before = await snapshot(redis_client)
    replay = await place(ledger)
    assert replay.status == "replayed" and replay.order_id is None
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize("case", ["insufficient", "dup"])
async def test_refusals_leave_the_guard_to_the_caller(redis_client: aioredis.Redis, case: str) -> None:
    """Only "ok" writes: an insufficient or duplicate order writes nothing, not even the
    guard (the API sets it itself for every refused request)."""
    ledger = Ledger(redis_client)
    await market_with_funds(redis_client)
    if case == "dup":
        assert (await place(ledger, sig="cd" * 32, coid="c1")).status == "ok"
    before = await snapshot(redis_client)
    result = await place(ledger, units=10**9 if case == "insufficient" else 100, coid="c1" if case == "dup" else None)
    assert result.status == case
    assert await snapshot(redis_client) == before


async def test_without_a_signature_no_guard_is_read_or_written(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await market_with_funds(redis_client)
    await redis_client.set(keys.signature_key("1", SIG), 1)
    assert (await place(ledger, sig=None)).status == "ok"
    assert (await place(ledger, sig=None)).status == "ok"
    assert await redis_client.keys("sig:*") == [keys.signature_key("1", SIG).encode()]


async def test_the_guard_key_is_declared(redis_client: aioredis.Redis) -> None:
    await market_with_funds(redis_client)
    call = enqueue_call(symbol=SYMBOL, user_id="1", lock_asset="USDC", lock_units=100, command_json="{}",
                        record_tail_json="}", client_order_id="c1", signature=SIG, replay_guard_ms=10_000)
    written = await written_keys(redis_client, "enqueue_order.lua", call)
    assert keys.signature_key("1", SIG) in written
    assert written - set(call.keys) == {keys.order_key(keys.USER_BUCKETS + keys.user_bucket("1"))}


@pytest.mark.parametrize("guard_ms", ["-1", "1.5", "x", "", "1234567890123"])
async def test_a_malformed_guard_ttl_is_refused_before_any_write(redis_client: aioredis.Redis, guard_ms: str) -> None:
    await market_with_funds(redis_client)
    call = enqueue_call(symbol=SYMBOL, user_id="1", lock_asset="USDC", lock_units=100, command_json="{}",
                        record_tail_json="}", client_order_id=None, signature=SIG, replay_guard_ms=10_000)
    at = call.args.index("10000")  # ARGV[18], the guard's ms
    args = [*call.args[:at], guard_ms, *call.args[at + 1:]]
    before = await snapshot(redis_client)
    reply = await redis_client.register_script(ledger_script_source("enqueue_order.lua"))(keys=call.keys, args=args)
    assert reply == [b"invalid", b"replay guard ms"]
    assert await snapshot(redis_client) == before


def test_a_signature_needs_a_positive_guard_time() -> None:
    with pytest.raises(ValueError):
        enqueue_call(symbol=SYMBOL, user_id="1", lock_asset="USDC", lock_units=1, command_json="{}",
                     record_tail_json="}", client_order_id=None, signature=SIG, replay_guard_ms=0)


async def test_corrupt_data_still_raises(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await redis_client.hset(keys.balance_key("1"), "USDC:available", "1.5")
    with pytest.raises(LedgerScriptError):
        await place(ledger)
    assert not await redis_client.exists(keys.signature_key("1", SIG))
