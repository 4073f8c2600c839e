"""The settlement fold on its own: fills and freed locks in, balance changes out."""

from __future__ import annotations

from collections import Counter

from cryptex_common.messages import Side
from cryptex_engine.domain.balances import fold_balances
from cryptex_engine.domain.commands import BalanceDelta, Fill

FEES = "fee-account"


def fill(trade_id: int, price: int, lots: int, maker: str, taker_side: Side, buyer_fee: int, seller_fee: int,
         taker: str = "T") -> Fill:
    return Fill(trade_id, price, lots, lots * 10, price * lots, taker_side, 1, taker, 100 + trade_id, maker,
                buyer_fee, seller_fee)


def fold(fills: list[Fill], releases: list[tuple[str, int]], taker_buys: bool, consumed: int,
         release: int) -> list[BalanceDelta]:
    return fold_balances(fills, releases, "T", taker_buys, consumed, release, "BASE", "QUOTE", FEES)


def conserved(deltas: list[BalanceDelta]) -> bool:
    total: Counter[str] = Counter()
    for d in deltas:
        total[d.asset] += d.available + d.locked
    return all(v == 0 for v in total.values())


def test_a_limit_buy_gets_its_price_improvement_back_and_pays_fees_to_the_fee_account() -> None:
    # The taker locked 12 per lot (its limit) and buys 2 lots at 10 from M1, 1 lot at 11 from M2.
    fills = [fill(1, 10, 2, "M1", Side.BUY, 1, 2), fill(2, 11, 1, "M2", Side.BUY, 1, 1)]
    consumed = 12 * 3  # its limit times its executed lots
    deltas = fold(fills, [], True, consumed, release=0)
    assert deltas == [
        BalanceDelta("T", "QUOTE", 36 - 31, -36),  # 31 spent, the rest of the lock freed
        BalanceDelta("T", "BASE", 30 - 2, 0),  # base received minus the buyer fees
        BalanceDelta("M1", "BASE", 0, -20),
        BalanceDelta("M1", "QUOTE", 20 - 2, 0),
        BalanceDelta("M2", "BASE", 0, -10),
        BalanceDelta("M2", "QUOTE", 11 - 1, 0),
        BalanceDelta(FEES, "BASE", 2, 0),
        BalanceDelta(FEES, "QUOTE", 3, 0),
    ]
    assert conserved(deltas)


def test_a_sell_with_releases_and_an_unrested_remainder() -> None:
    # The taker sells 1 lot to M1 (buying at 10, who locked 2 more than it paid) and expires
    # with 5 base of its lock left; its own resting buy was expired by STP, freeing 7 quote.
    fills = [fill(1, 10, 1, "M1", Side.SELL, 1, 0)]
    deltas = fold(fills, [("T", 7), ("M1", 2)], False, consumed=10, release=5)
    assert deltas == [
        BalanceDelta("T", "QUOTE", 10 + 7, -7),
        BalanceDelta("T", "BASE", 5, -15),
        BalanceDelta("M1", "QUOTE", 2, -12),
        BalanceDelta("M1", "BASE", 10 - 1, 0),
        BalanceDelta(FEES, "BASE", 1, 0),
    ]
    assert conserved(deltas)


def test_entries_that_net_to_zero_are_dropped() -> None:
    # No fill, nothing released: nothing changes, not even the taker's entries.
    assert fold([], [], True, consumed=0, release=0) == []
    # A maker of the taker's own user without STP: its entries merge into the taker's.
    fills = [fill(1, 10, 1, "T", Side.BUY, 0, 0)]
    deltas = fold(fills, [], True, consumed=10, release=0)
    assert deltas == [BalanceDelta("T", "QUOTE", 10, -10), BalanceDelta("T", "BASE", 10, -10)]
    assert conserved(deltas)
