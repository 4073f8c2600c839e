"""Issue 11 defect 2: a ledger script must apply all of its writes or none.

Redis keeps a script's earlier writes when a later command errors, and HINCRBY errors past
2**63 - 1. Each test drives a total or balance across that limit, retries on error the way a
client retries a 503, and checks that the money was moved exactly once and conserved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from cryptex_common import keys
from cryptex_common.ledger import BalanceChange, Ledger
from tests.ledger.test_ledger_scripts import SYMBOL, enqueue, own_market

INT64_MAX = 2**63 - 1


async def retried(call: Callable[[], Awaitable[Any]], attempts: int = 3) -> Any:
    """What a client does with a 503 'retry': call again, up to `attempts` times.
    Returns the first reply, or the last error when every attempt failed."""
    error: ResponseError | None = None
    for _ in range(attempts):
        try:
            return await call()
        except ResponseError as exc:
            error = exc
    return error


async def seed(redis: aioredis.Redis, asset: str, held: dict[str, tuple[int, int]],
               deposits: int, withdrawals: int = 0) -> None:
    """Balances {user: (available, locked)} and totals, conserved: held == deposits - withdrawals."""
    assert sum(a + lk for a, lk in held.values()) == deposits - withdrawals
    for user, (available, locked) in held.items():
        await redis.hset(keys.balance_key(user), mapping={
            keys.available_field(asset): str(available), keys.locked_field(asset): str(locked)})
    await redis.hset(keys.totals_key(keys.user_tag(next(iter(held)))), mapping={
        f"{asset}:deposits": str(deposits), f"{asset}:withdrawals": str(withdrawals)})


async def assert_conserved(ledger: Ledger, asset: str) -> None:
    row = (await ledger.conservation_report())[asset]
    assert row["held"] + row["inFlight"] == row["deposits"] - row["withdrawals"], row


async def test_deposit_past_int64_deposit_total_credits_once(redis_client: aioredis.Redis) -> None:
    """issue 11 defect 2: a deposit whose all-time total passes 2**63 - 1 was credited to the
    user but neither the total nor the txId was recorded, so every retry credited again."""
    ledger = Ledger(redis_client)
    await seed(redis_client, "SOL", {"a": (INT64_MAX - 5, 0)}, deposits=INT64_MAX - 5)

    async def deposit() -> Any:
        return await ledger.move_funds(kind="deposit", user_id="b", asset="SOL", units=10,
                                       tx_id="dep-b", record={"tx": "dep-b"})

    reply = await retried(deposit)
    assert await ledger.balances("b") == {"SOL": {"available": 10, "locked": 0}}
    assert reply == ("ok", None)
    assert (await deposit())[0] == "dup"
    assert (await ledger.conservation_report())["SOL"]["deposits"] == INT64_MAX + 5
    await assert_conserved(ledger, "SOL")


async def test_withdraw_past_int64_withdrawal_total_debits_once(redis_client: aioredis.Redis) -> None:
    """issue 11 defect 2: a withdrawal whose all-time total passes 2**63 - 1 debited the user
    without recording the total or the txId; each retry debited again."""
    ledger = Ledger(redis_client)
    await seed(redis_client, "SOL", {"a": (100, 0)}, deposits=INT64_MAX + 95, withdrawals=INT64_MAX - 5)

    async def withdraw() -> Any:
        return await ledger.move_funds(kind="withdraw", user_id="a", asset="SOL", units=10,
                                       tx_id="wd-a", record={"tx": "wd-a"})

    reply = await retried(withdraw)
    assert await ledger.balances("a") == {"SOL": {"available": 90, "locked": 0}}
    assert reply == ("ok", None)
    assert (await withdraw())[0] == "dup"
    assert (await ledger.conservation_report())["SOL"]["withdrawals"] == INT64_MAX + 5
    await assert_conserved(ledger, "SOL")


async def test_enqueue_past_int64_lock_locks_once(redis_client: aioredis.Redis) -> None:
    """issue 11 defect 2: an order whose lock pushes `locked` past 2**63 - 1 debited
    `available`, then failed to lock or queue; each retry debited again."""
    ledger = Ledger(redis_client)
    await seed(redis_client, "USDC", {"1": (100, INT64_MAX - 5)}, deposits=INT64_MAX + 95)
    placed = await retried(lambda: enqueue(ledger, "1", 10))  # R1 and the hand-over
    assert await ledger.balances("1") == {"USDC": {"available": 90, "locked": INT64_MAX + 5}}
    assert placed.status == "ok"
    assert await redis_client.xlen(keys.commands_stream(SYMBOL)) == 1
    await assert_conserved(ledger, "USDC")


async def test_settle_past_int64_fee_balance_applies_batch_once(redis_client: aioredis.Redis) -> None:
    """issue 11 defect 2: a batch whose fee credit passes 2**63 - 1 applied the earlier
    deltas, then failed; the retry found them applied and refused or applied them again."""
    ledger = Ledger(redis_client)
    await own_market(redis_client)
    await seed(redis_client, "USDC", {"1": (0, 100), keys.FEE_ACCOUNT: (INT64_MAX - 5, 0)},
               deposits=INT64_MAX + 95)
    trade = [BalanceChange("2", "USDC", 90, 0), BalanceChange("1", "USDC", 0, -100),
             BalanceChange(keys.FEE_ACCOUNT, "USDC", 10, 0)]

    async def settle() -> Any:
        return await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=1, last_seq=1, batch_json="",
                                   balances=trade, orders=[])

    result = await retried(settle)
    assert await ledger.balances("2") == {"USDC": {"available": 90, "locked": 0}}
    assert result.status == "ok"
    assert (await settle()).status == "duplicate"
    assert await ledger.balances(keys.FEE_ACCOUNT) == {"USDC": {"available": INT64_MAX + 5, "locked": 0}}
    await assert_conserved(ledger, "USDC")
