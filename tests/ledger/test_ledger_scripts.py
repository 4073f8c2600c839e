"""The ledger's Lua scripts against a real Redis: atomic lock+enqueue, exactly-once and
fenced settlement, idempotent transfers, and no Lua double ever rounding an amount."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from cryptex_common import keys
from cryptex_common.ledger import BalanceChange, BucketRefused, Ledger, OrderWrite

SYMBOL = "SOL/USDC"
BIG = 2**62 + 12345  # beyond 2**53: a Lua double would lose the last digits


async def fund(ledger: Ledger, user: str, asset: str, units: int, tx: str) -> None:
    status, _ = await ledger.move_funds(kind="deposit", user_id=user, asset=asset, units=units,
                                        tx_id=tx, record={"tx": tx})
    assert status == "ok"


async def enqueue(ledger: Ledger, user: str, units: int, coid: str | None = None):  # type: ignore[no-untyped-def]
    return await ledger.place(
        symbol=SYMBOL, user_id=user, lock_asset="USDC", lock_units=units,
        command_json='{"type":"place"}', record_tail_json='"status":"new"}', client_order_id=coid,
    )


async def own_market(redis: aioredis.Redis, epoch: int = 1) -> None:
    await redis.set(keys.engine_epoch_key(SYMBOL), epoch)
    await redis.set(keys.engine_lease_key(SYMBOL), epoch)


async def test_enqueue_locks_funds_and_queues_in_one_step(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await fund(ledger, "1", "USDC", 1_000, "t1")
    result = await enqueue(ledger, "1", 600)
    first_id = keys.USER_BUCKETS + keys.user_bucket("1")  # ids: n * buckets + the owner's bucket
    assert result.status == "ok" and result.order_id == first_id
    assert await ledger.balances("1") == {"USDC": {"available": 400, "locked": 600}}
    entries = await redis_client.xrange(keys.commands_stream(SYMBOL))
    assert len(entries) == 1 and entries[0][1][b"id"] == str(first_id).encode()
    record = await redis_client.hget(keys.order_key(first_id), "r")
    assert record.startswith(b'{"orderId":%d,"createdMs":' % first_id)
    assert await redis_client.zrange(keys.open_orders_key("1"), 0, -1) == [str(first_id).encode()]


async def test_insufficient_funds_changes_nothing(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await fund(ledger, "1", "USDC", 500, "t1")
    result = await enqueue(ledger, "1", 501)
    assert result.status == "insufficient"
    assert await ledger.balances("1") == {"USDC": {"available": 500, "locked": 0}}
    assert await redis_client.xlen(keys.commands_stream(SYMBOL)) == 0
    assert await redis_client.get(keys.order_id_counter(keys.user_bucket("1"))) is None


async def test_client_order_id_returns_the_first_order(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await fund(ledger, "1", "USDC", 1_000, "t1")
    first = await enqueue(ledger, "1", 100, coid="abc")
    again = await enqueue(ledger, "1", 100, coid="abc")
    assert again.status == "dup" and again.order_id == first.order_id
    assert await ledger.balances("1") == {"USDC": {"available": 900, "locked": 100}}
    assert await redis_client.xlen(keys.commands_stream(SYMBOL)) == 1


async def test_amounts_beyond_2_pow_53_stay_exact(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await fund(ledger, "1", "USDC", BIG, "t1")
    assert (await enqueue(ledger, "1", BIG - 1)).status == "ok"
    assert await ledger.balances("1") == {"USDC": {"available": 1, "locked": BIG - 1}}


async def settle(ledger: Ledger, first: int, last: int, changes: list[BalanceChange], epoch: int = 1,
                 orders: list[OrderWrite] | None = None):  # type: ignore[no-untyped-def]
    return await ledger.settle(symbol=SYMBOL, epoch=epoch, first_seq=first, last_seq=last,
                               batch_json='{"batch":1}', balances=changes, orders=orders or [])


async def test_settle_moves_funds_once_by_sequence(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await own_market(redis_client)
    await fund(ledger, "1", "USDC", 1_000, "t1")
    await enqueue(ledger, "1", 1_000)
    trade = [BalanceChange("1", "USDC", 0, -1_000), BalanceChange("2", "USDC", 990, 0),
             BalanceChange(keys.FEE_ACCOUNT, "USDC", 10, 0)]
    assert (await settle(ledger, 1, 3, trade)).status == "ok"
    assert (await settle(ledger, 1, 3, trade)).status == "duplicate"  # a replayed batch
    assert (await settle(ledger, 5, 6, [])).status == "gap"
    assert await ledger.balances("2") == {"USDC": {"available": 990, "locked": 0}}
    assert await ledger.balances("1") == {"USDC": {"available": 0, "locked": 0}}
    assert await redis_client.get(keys.settled_seq_key(SYMBOL)) == b"3"
    assert await redis_client.xlen(keys.events_stream(SYMBOL)) == 1
    report = await ledger.conservation_report()
    assert report["USDC"] == {"held": 1_000, "inFlight": 0, "deposits": 1_000, "withdrawals": 0}
    assert await redis_client.xlen(keys.journal_stream(SYMBOL)) == 1  # acknowledged by the next batch


async def test_stale_epoch_or_lapsed_lease_settles_nothing(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await own_market(redis_client, epoch=2)
    change = [BalanceChange("9", "USDC", 5, 0)]
    assert (await settle(ledger, 1, 1, change, epoch=1)).status == "fenced"
    await redis_client.delete(keys.engine_lease_key(SYMBOL))
    assert (await settle(ledger, 1, 1, change, epoch=2)).status == "fenced"
    assert await ledger.balances("9") == {}
    assert await redis_client.get(keys.settled_seq_key(SYMBOL)) is None
    assert await redis_client.xlen(keys.events_stream(SYMBOL)) == 0


async def test_a_bucket_refusing_a_negative_balance_writes_nothing_there(redis_client: aioredis.Redis) -> None:
    """A bucket call that would take a balance below zero writes nothing in its bucket and
    raises (the engine stops); the batch stays journaled for repair."""
    ledger = Ledger(redis_client)
    await own_market(redis_client)
    await fund(ledger, "1", "USDC", 100, "t1")
    changes = [BalanceChange("1", "USDC", -101, 0), BalanceChange("2", "USDC", 101, 0)]
    order_id = 7 * keys.USER_BUCKETS + keys.user_bucket("1")
    order = OrderWrite(order_id, "1", '{"orderId":7}', True)
    with pytest.raises(BucketRefused) as refused:
        await settle(ledger, 1, 1, changes, orders=[order])
    assert (refused.value.status, refused.value.detail) == ("negative", (keys.balance_key("1"), "USDC:available"))
    assert await ledger.balances("1") == {"USDC": {"available": 100, "locked": 0}}
    assert await redis_client.hget(keys.order_key(order_id), "r") is None
    assert await redis_client.get(keys.settled_seq_key(SYMBOL)) == b"1"
    assert await redis_client.xlen(keys.journal_stream(SYMBOL)) == 1


async def test_settle_closes_terminal_orders(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await own_market(redis_client)
    await fund(ledger, "1", "USDC", 100, "t1")
    placed = await enqueue(ledger, "1", 100)
    done = OrderWrite(placed.order_id, "1", '{"status":"filled"}', True)
    assert (await settle(ledger, 1, 1, [], orders=[done])).status == "ok"
    assert await redis_client.zrange(keys.open_orders_key("1"), 0, -1) == []
    assert await redis_client.hget(keys.order_key(placed.order_id), "r") == b'{"status":"filled"}'
    assert await redis_client.ttl(keys.order_key(placed.order_id)) > 0


async def test_transfers_are_idempotent_by_tx_id(redis_client: aioredis.Redis) -> None:
    ledger = Ledger(redis_client)
    await fund(ledger, "1", "SOL", 10, "dep-1")
    status, stored = await ledger.move_funds(kind="deposit", user_id="1", asset="SOL", units=10,
                                             tx_id="dep-1", record={"tx": "dep-1"})
    assert status == "dup" and stored == {"tx": "dep-1"}
    status, _ = await ledger.move_funds(kind="withdraw", user_id="1", asset="SOL", units=11,
                                        tx_id="wd-1", record={})
    assert status == "insufficient"
    status, _ = await ledger.move_funds(kind="withdraw", user_id="1", asset="SOL", units=4,
                                        tx_id="wd-2", record={})
    assert status == "ok"
    assert await ledger.balances("1") == {"SOL": {"available": 6, "locked": 0}}
    assert (await ledger.conservation_report())["SOL"] == {"held": 6, "inFlight": 0, "deposits": 10,
                                                           "withdrawals": 4}


@pytest.mark.parametrize("units", [0, -5])
async def test_enqueue_refuses_non_positive_locks(redis_client: aioredis.Redis, units: int) -> None:
    with pytest.raises(ValueError):
        await enqueue(Ledger(redis_client), "1", units)
