"""The matching walk of the core: a taker against the opposite side (a part of
`MatchingEngine`; invariants in matching.py).

`_execute` is the walk (`_walk` level by level, `_take` inside a level: fills, maker
updates, freed locks), the taker's end (filled, rested or expired) and the settlement fold
(`fold_balances` in balances.py: balance changes). The walk keeps its per-fill work inline: it is the hottest
code of the engine, and a helper call per fill costs measurable throughput (bench_core).
"""

from __future__ import annotations

from cryptex_common.markets import SelfTradePrevention
from cryptex_common.messages import Side
from cryptex_engine.domain.balances import Release, fold_balances
from cryptex_engine.domain.book import BookSide, Order, PriceLevel
from cryptex_engine.domain.commands import CommandResult, Fill, OrderUpdate, PlaceOrder
from cryptex_engine.domain.state import (
    _STOP_BUDGET,
    _STOP_STP,
    BUY,
    EXPIRED,
    FILLED,
    GTC,
    NEW,
    PARTIAL,
    REASON_STP,
    SELL,
    STP_MAKER,
    STP_NONE,
    STP_TAKER,
    EngineState,
)


class Execution(EngineState):
    __slots__ = ()

    def _fok_fillable(
        self,
        opposite: BookSide,
        user_id: str,
        is_buy: bool,
        lots: int,
        limit_ticks: int | None,
        budget_units: int | None,
        stp: SelfTradePrevention,
    ) -> bool:
        """Walk the book exactly as `_execute` would, changing nothing: would it fill all?"""
        need = lots
        check_stp = stp != STP_NONE
        qutl = self._quote_units_per_tick_lot
        for level in opposite.levels_best_first():
            price = level.price_ticks
            if limit_ticks is not None and (price > limit_ticks if is_buy else price < limit_ticks):
                return False
            unit = price * qutl
            for maker in level.orders.values():
                if check_stp and maker.user_id == user_id:
                    if stp == STP_MAKER:
                        continue  # the maker would be expired; the walk goes on
                    return False  # the taker would be expired here
                q = maker.remaining_lots if maker.remaining_lots < need else need
                if budget_units is not None:
                    if budget_units // unit < q:
                        return False  # prices only get worse: the budget cannot reach `lots`
                    budget_units -= q * unit
                need -= q
                if need == 0:
                    return True
        return False

    def _execute(
        self,
        cmd: PlaceOrder,
        is_buy: bool,
        limit_ticks: int | None,
        lots: int,
        opposite: BookSide,
        budget_units: int | None,
        stp: SelfTradePrevention,
        ts_ms: int,
    ) -> CommandResult:
        """Match a taker of `lots` (at most `limit_ticks`, None for a market order) against
        the opposite side (the walk), end it (filled, rested or expired), and fold the
        walk's fills and freed locks into balance changes."""
        fills, updates, releases, touched, stop, lots_left, executed_quote = self._walk(
            cmd, is_buy, limit_ticks, lots, opposite, budget_units, stp)
        executed_lots = lots - lots_left
        # What the fills used up of the taker's lock: a buy what it locked for its lots at
        # its own limit (the exact cost for a market buy), a sell the base it sold.
        if not is_buy:
            consumed = self._base_units_per_lot * executed_lots
        elif limit_ticks is not None:
            consumed = limit_ticks * self._quote_units_per_tick_lot * executed_lots
        else:
            consumed = executed_quote
        taker_side = BUY if is_buy else SELL
        reason = None
        if stop == _STOP_STP:
            status, reason = EXPIRED, REASON_STP
        elif lots_left == 0 and executed_lots:
            status = FILLED  # (a budget too small for one lot starts with lots_left == 0)
        elif stop == _STOP_BUDGET and cmd.quantity_lots is None and executed_lots > 0:
            status = FILLED  # a budget-only market buy spent what it could
        elif limit_ticks is not None and cmd.time_in_force == GTC:
            status = PARTIAL if executed_lots else NEW  # rests with its lots left
        else:
            status = EXPIRED
        remaining, release = 0, cmd.locked_units - consumed
        if status is NEW or status is PARTIAL:  # the taker becomes a resting order
            taker = Order(cmd.order_id, cmd.user_id, is_buy, limit_ticks, lots, release, cmd.client_order_id)
            taker.remaining_lots = remaining = lots_left
            taker.executed_lots = executed_lots
            taker.executed_quote_units = executed_quote
            touched.append((taker_side, limit_ticks, self.book.rest(taker)))  # type: ignore[arg-type]
            release = 0
        deltas = fold_balances(fills, releases, cmd.user_id, is_buy, consumed, release,
                               self._base_asset, self._quote_asset, self.fee_account)
        order = OrderUpdate(cmd.order_id, cmd.user_id, taker_side, status, executed_lots, executed_quote,
                            remaining, reason)
        updates.insert(0, order)
        depth = []  # (a loop, not a comprehension: one frame less on every taker)
        for side, price, level in touched:
            depth.append((side, price, level.total_lots))
        return CommandResult.executed(self.seq, ts_ms, order, updates, fills, deltas, depth)

    def _walk(self, cmd: PlaceOrder, is_buy: bool, limit_ticks: int | None, lots: int, opposite: BookSide,
              budget_units: int | None, stp: SelfTradePrevention) -> Walk:
        """The match walk: take from the best level down, FIFO inside a level, at the
        maker's price, until the taker's lots, its limit, its budget or STP stop it. Changes
        the book (makers' remaining lots and locks, emptied levels); the balance changes are
        `fold_balances`' (balances.py)."""
        fills: list[Fill] = []
        updates: list[OrderUpdate] = []
        releases: list[Release] = []
        touched: list[tuple[Side, int, PriceLevel]] = []
        taker_bps, maker_bps = self.taker_fee_bps, self.maker_fee_bps
        maker_side = SELL if is_buy else BUY
        terms = (
            cmd.order_id, cmd.user_id, BUY if is_buy else SELL, maker_side,
            cmd.user_id if stp != STP_NONE else None,  # whose orders it must not trade with
            stp, budget_units,
            taker_bps if is_buy else maker_bps,  # the buyer's fee rate
            maker_bps if is_buy else taker_bps,  # the seller's
            is_buy, fills, updates, releases,
        )
        keys = opposite.keys
        levels = opposite.levels
        sign = -1 if is_buy else 1  # opposite key -> price (asks store minus the price)
        # keys below `floor` are past the taker's limit (every key is above it for a market order)
        floor = sign * limit_ticks if limit_ticks is not None else -(1 << 127)
        book_orders, by_user = self.book.orders, self.book.by_user
        lots_left = lots
        executed_quote = stop = 0
        while lots_left > 0 and keys and keys[-1] >= floor:
            price = sign * keys[-1]
            level = levels[price]
            lots_before = level.total_lots
            done: list[Order] = []
            lots_left, executed_quote, stop = self._take(terms, level, lots_left, executed_quote, done)
            if done:  # (OrderBook.unindex and BookSide.drop_level, inlined: most takers empty a level)
                orders = level.orders
                for maker in done:
                    del orders[maker.order_id]
                    del book_orders[maker.order_id]
                    mine = by_user[maker.user_id]
                    del mine[maker.order_id]
                    if not mine:
                        del by_user[maker.user_id]
                if not orders:  # the walk is at the best level: its key is the last
                    del levels[price]
                    keys.pop()
            if level.total_lots != lots_before:
                touched.append((maker_side, price, level))
            if stop:
                break
        self.last_trade_id += len(fills)
        return fills, updates, releases, touched, stop, lots_left, executed_quote

    def _take(self, terms: WalkTerms, level: PriceLevel, lots_left: int, executed_quote: int,
              done: list[Order]) -> tuple[int, int, int]:
        """The walk inside one level, FIFO: a fill per maker until the taker is done or
        stopped. Appends the makers that leave the level to `done` (always a prefix of its
        queue); returns the taker's lots left, its executed quote and why it stopped (0: it
        did not)."""
        (taker_id, taker_user, taker_side, maker_side, stp_user, _stp, budget_units, buyer_bps, seller_bps,
         gives_base, fills, updates, releases) = terms
        trade_id = self.last_trade_id + len(fills)
        price = level.price_ticks
        unit = price * self._quote_units_per_tick_lot  # quote units per lot at this price
        bupl = self._base_units_per_lot
        for maker in level.orders.values():
            if maker.user_id == stp_user:
                if self._self_trade(terms, level, maker, done):
                    return lots_left, executed_quote, _STOP_STP
                continue
            q = maker.remaining_lots
            if q > lots_left:
                q = lots_left
            if budget_units is not None:
                affordable = (budget_units - executed_quote) // unit
                if affordable < q:
                    if affordable == 0:
                        return lots_left, executed_quote, _STOP_BUDGET
                    q = affordable
            quote_units = unit * q
            base_units = bupl * q
            trade_id += 1
            lots_left -= q
            executed_quote += quote_units
            maker.remaining_lots -= q
            maker.executed_lots += q
            maker.executed_quote_units += quote_units
            # the fill takes from the maker's lock what it delivers: the base it sells, or
            # the quote at its own price (the trade price) when it buys
            maker.locked_remaining -= base_units if gives_base else quote_units
            level.total_lots -= q
            # fee_units(), inlined: ceil(received * bps / 10000)
            buyer_fee = -((-base_units * buyer_bps) // 10000)
            seller_fee = -((-quote_units * seller_bps) // 10000)
            fills.append(Fill(trade_id, price, q, base_units, quote_units, taker_side, taker_id, taker_user,
                              maker.order_id, maker.user_id, buyer_fee, seller_fee))
            if maker.remaining_lots == 0:
                done.append(maker)
                if maker.locked_remaining:  # locked beyond what its fills consumed
                    releases.append((maker.user_id, maker.locked_remaining))
                    maker.locked_remaining = 0
                status = FILLED
            else:
                status = PARTIAL
            updates.append(OrderUpdate(maker.order_id, maker.user_id, maker_side, status, maker.executed_lots,
                                       maker.executed_quote_units, maker.remaining_lots))
            if lots_left == 0:
                break
            if status is PARTIAL:
                # The maker still has lots, so the budget cut this fill short: the taker
                # must not walk past a maker it could not finish (FIFO).
                return lots_left, executed_quote, _STOP_BUDGET
        return lots_left, executed_quote, 0

    def _self_trade(self, terms: WalkTerms, level: PriceLevel, maker: Order, done: list[Order]) -> bool:
        """The taker meets its owner's resting order: expire the maker (expire_maker,
        expire_both), and say whether the taker stops here (expire_taker, expire_both)."""
        stp, updates, releases = terms[5], terms[11], terms[12]
        if stp != STP_TAKER:
            level.total_lots -= maker.remaining_lots
            if maker.locked_remaining:
                releases.append((maker.user_id, maker.locked_remaining))
            updates.append(self._terminate_resting(maker, EXPIRED, REASON_STP))
            done.append(maker)
        return stp != STP_MAKER


# A walk's fixed terms, unpacked once per level: taker order id, taker user, taker side,
# maker side, the user whose resting orders the taker must not trade with (None: STP off),
# the STP mode, the budget (None: no budget), the buyer's and the seller's fee bps, whether
# makers deliver base (the taker buys), and the walk's fills, maker updates and releases.
WalkTerms = tuple[int, str, Side, Side, str | None, SelfTradePrevention, int | None, int, int, bool,
                  list[Fill], list[OrderUpdate], list[Release]]
# What a walk did: fills and maker updates in walk order, the maker locks it freed, the
# levels it changed, why it stopped (0, _STOP_BUDGET, _STOP_STP), the taker's lots left and
# the quote it executed.
Walk = tuple[list[Fill], list[OrderUpdate], list[Release], list[tuple[Side, int, PriceLevel]], int, int, int]
