"""Issue 16: a crash between any two steps of the sharded ledger loses nothing, and one
reconciler pass finishes what it left, applying nothing twice; money is conserved at every
moment in between, counting what is in flight. On one Redis and on a Redis Cluster.

The steps of an order: R1 (lock + outbox, the user's bucket), the hand-over (the market's
stream), and of a batch: step A (the market's slot, journaled), one call per bucket. A
"crash" is simply not running the next step; the reconciler must then do it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from cryptex_common import keys, redis_client
from cryptex_common.ledger import BalanceChange, Ledger, OrderWrite, handover_call, settle_plan
from cryptex_engine import reconcile
from cryptex_engine.reconcile import reconcile_once
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

SOL = "SOL/USDC"
BTC = "BTC/USDC"


@pytest.fixture(params=["single", "cluster"])
async def redis(request: pytest.FixtureRequest, redis_srv: RedisServer,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[aioredis.Redis]:
    url = redis_srv.url if request.param == "single" else request.getfixturevalue("cluster").url
    client = redis_client.connect(url, "tests")
    await client.flushall()
    monkeypatch.setattr(reconcile, "OUTBOX_MIN_AGE_MS", 0)  # every outbox entry counts as stuck
    yield client
    await client.aclose()


async def conserved(ledger: Ledger) -> dict[str, dict[str, int]]:
    report = await ledger.conservation_report()
    for asset, row in report.items():
        assert row["held"] + row["inFlight"] == row["deposits"] - row["withdrawals"], (asset, row)
    return report


async def r1(ledger: Ledger, user: str, units: int, symbol: str = SOL) -> int:
    enq = await ledger.enqueue_order(symbol=symbol, user_id=user, lock_asset="USDC", lock_units=units,
                                     command_json='{"type":"place"}', record_tail_json='"status":"new"}',
                                     client_order_id=None)
    assert enq.status == "ok" and enq.order_id is not None
    return enq.order_id


async def stream_ids(redis: aioredis.Redis, symbol: str) -> list[int]:
    return [int(fields[b"id"]) for _, fields in await redis.xrange(keys.commands_stream(symbol))]


async def test_an_order_locked_but_never_handed_over_is_queued_once(redis: aioredis.Redis) -> None:
    """Crash after R1 (the API died): the funds are locked and the order is in its
    bucket's outbox; the reconciler queues it on its market once, a second pass nothing."""
    ledger = Ledger(redis)
    await ledger.move_funds(kind="deposit", user_id="7", asset="USDC", units=1000, tx_id="d", record={})
    stuck = await r1(ledger, "7", 300)
    other = await r1(ledger, "7", 200, BTC)
    await conserved(ledger)
    assert await stream_ids(redis, SOL) == []
    first = await reconcile_once(redis, ledger, [SOL, BTC])
    assert (first.handed_over, first.already_handed) == (2, 0)
    second = await reconcile_once(redis, ledger, [SOL, BTC])
    assert (second.handed_over, second.already_handed) == (0, 0)
    assert await stream_ids(redis, SOL) == [stuck] and await stream_ids(redis, BTC) == [other]
    assert await redis.xlen(keys.outbox_stream(keys.user_tag("7"))) == 0
    assert await ledger.balances("7") == {"USDC": {"available": 500, "locked": 500}}


async def test_an_order_handed_over_before_the_crash_is_not_queued_again(redis: aioredis.Redis) -> None:
    """Crash after the hand-over, its outbox entry still there: the reconciler's hand-over
    finds the marker and adds nothing; the outbox entry is deleted."""
    ledger = Ledger(redis)
    await ledger.move_funds(kind="deposit", user_id="8", asset="USDC", units=1000, tx_id="d", record={})
    order_id = await r1(ledger, "8", 300)
    [(outbox_id, _)] = await redis.xrange(keys.outbox_stream(keys.user_tag("8")))
    await ledger.hand_over(handover_call(symbol=SOL, order_id=order_id, user_id="8", lock_asset="USDC",
                                         lock_units=300, command_json='{"type":"place"}',
                                         outbox_id=outbox_id.decode()))
    result = await reconcile_once(redis, ledger, [SOL])
    assert (result.handed_over, result.already_handed) == (0, 1)
    assert await stream_ids(redis, SOL) == [order_id]
    assert await redis.xlen(keys.outbox_stream(keys.user_tag("8"))) == 0


def trade_plan(first: int, last: int, maker_order: int) -> Any:
    """A batch in which user 1 (bucket 1) buys from user 2 (bucket 2), fee to the fee
    account: three ledger tags, each its own bucket call."""
    return settle_plan(symbol=SOL, epoch=1, first_seq=first, last_seq=last, batch_json='{"b":1}',
                       balances=[BalanceChange("1", "USDC", 0, -100), BalanceChange("1", "SOL", 10, 0),
                                 BalanceChange("2", "USDC", 98, 0), BalanceChange("2", "SOL", 0, -10),
                                 BalanceChange(keys.FEE_ACCOUNT, "USDC", 2, 0)],
                       orders=[OrderWrite(maker_order, "2", '{"status":"filled"}', True)])


@pytest.mark.parametrize("applied_before_crash", [0, 1, 2, 3])
async def test_a_batch_cut_between_its_bucket_calls_is_finished_once(
        redis: aioredis.Redis, applied_before_crash: int) -> None:
    """Crash after step A and after `applied_before_crash` of its 3 bucket calls: money is
    conserved at every moment counting what is in flight; the reconciler applies the
    rest once (the applied ones are skipped), and deletes the journal entry."""
    ledger = Ledger(redis)
    await redis.set(keys.engine_epoch_key(SOL), 1)
    await redis.set(keys.engine_lease_key(SOL), 1)
    for user, asset, units in (("1", "USDC", 100), ("2", "SOL", 10)):
        await ledger.move_funds(kind="deposit", user_id=user, asset=asset, units=units, tx_id="d", record={})
    sell = await ledger.enqueue_order(symbol=SOL, user_id="2", lock_asset="SOL", lock_units=10,
                                      command_json="{}", record_tail_json='"status":"new"}', client_order_id=None)
    await r1(ledger, "1", 100)
    assert sell.order_id is not None
    plan = trade_plan(1, 2, sell.order_id)
    assert (await ledger.run_market(plan.market)).status == "ok"
    assert {tag for tag, _ in plan.buckets} == {keys.user_tag("1"), keys.user_tag("2"), keys.FEE_TAG}
    for _tag, call in plan.buckets[:applied_before_crash]:
        await ledger.apply_bucket(call)
    in_flight = await conserved(ledger)
    if applied_before_crash in (1, 2):  # part applied: the rest is money in flight
        assert any(row["inFlight"] for row in in_flight.values())
    result = await reconcile_once(redis, ledger, [SOL])
    assert result.journal_entries == 1
    report = await conserved(ledger)
    assert all(row["inFlight"] == 0 for row in report.values())
    assert await ledger.balances("1") == {"USDC": {"available": 0, "locked": 0}, "SOL": {"available": 10, "locked": 0}}
    assert await ledger.balances("2") == {"USDC": {"available": 98, "locked": 0}, "SOL": {"available": 0, "locked": 0}}
    assert await ledger.balances(keys.FEE_ACCOUNT) == {"USDC": {"available": 2, "locked": 0}}
    assert await redis.hget(keys.order_key(sell.order_id), "r") == b'{"status":"filled"}'
    assert await redis.xlen(keys.journal_stream(SOL)) == 0
    again = await reconcile_once(redis, ledger, [SOL])
    assert again.journal_entries == 0 and await ledger.balances("2") == {
        "USDC": {"available": 98, "locked": 0}, "SOL": {"available": 0, "locked": 0}}
    for _tag, call in plan.buckets:  # a late bucket call of the engine: already applied
        assert await ledger.apply_bucket(call) == frozenset()
    assert await ledger.balances("1") == {"USDC": {"available": 0, "locked": 0}, "SOL": {"available": 10, "locked": 0}}


async def test_a_duplicate_step_a_applies_nothing_of_its_own(redis: aioredis.Redis) -> None:
    """A batch recorded before (its answer lost): Ledger.settle refuses it as "duplicate"
    and runs none of its bucket calls; only the journal, as recorded, is applied."""
    ledger = Ledger(redis)
    await redis.set(keys.engine_epoch_key(SOL), 1)
    await redis.set(keys.engine_lease_key(SOL), 1)
    await ledger.move_funds(kind="deposit", user_id="1", asset="USDC", units=100, tx_id="d", record={})
    await ledger.move_funds(kind="deposit", user_id="2", asset="SOL", units=10, tx_id="d", record={})
    await r1(ledger, "1", 100)
    order = await ledger.enqueue_order(symbol=SOL, user_id="2", lock_asset="SOL", lock_units=10, command_json="{}",
                                       record_tail_json='"status":"new"}', client_order_id=None)
    assert order.order_id is not None
    assert (await ledger.run_market(trade_plan(1, 2, order.order_id).market)).status == "ok"
    res = await ledger.run_plan(trade_plan(1, 1, order.order_id))  # other boundaries, same commands
    assert res.status == "duplicate"
    await reconcile_once(redis, ledger, [SOL])
    assert await ledger.balances("2") == {"USDC": {"available": 98, "locked": 0}, "SOL": {"available": 0, "locked": 0}}
    await conserved(ledger)


async def test_the_bucket_call_settling_an_order_deletes_its_outbox_entry(redis: aioredis.Redis) -> None:
    """The hand-over copies the outbox entry's id onto the command; the bucket call that
    settles the order deletes the entry in the same slot, so the relay never re-hands an
    order that was settled (and costs nothing per order)."""
    ledger = Ledger(redis)
    await redis.set(keys.engine_epoch_key(SOL), 1)
    await redis.set(keys.engine_lease_key(SOL), 1)
    await ledger.move_funds(kind="deposit", user_id="9", asset="USDC", units=100, tx_id="d", record={})
    placed = await ledger.place(symbol=SOL, user_id="9", lock_asset="USDC", lock_units=100, command_json="{}",
                                record_tail_json='"status":"new"}', client_order_id=None)
    assert placed.order_id is not None and placed.outbox_id is not None
    [(_sid, entry)] = await redis.xrange(keys.commands_stream(SOL))
    assert entry[b"o"] == placed.outbox_id.encode()
    res = await ledger.settle(symbol=SOL, epoch=1, first_seq=1, last_seq=1, batch_json="", balances=[],
                              orders=[OrderWrite(placed.order_id, "9", '{"status":"new"}', False)],
                              outbox_acks=[("9", placed.outbox_id)])
    assert res.status == "ok"
    assert await redis.xlen(keys.outbox_stream(keys.user_tag("9"))) == 0
    assert (await reconcile_once(redis, ledger, [SOL])).already_handed == 0
