"""The matching walk of the core: a taker against the opposite side (a part of
`MatchingEngine`; invariants in matching.py). Inlined on purpose: this is the hottest code
of the engine, and every helper call per fill costs measurable throughput (bench_core)."""

from __future__ import annotations

from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import SelfTradePrevention
from cryptex_common.messages import Side
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
    _add_delta,
    _delta_list,
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
        taker: Order,
        opposite: BookSide,
        budget_units: int | None,
        stp: SelfTradePrevention,
        ts_ms: int,
    ) -> CommandResult:
        """Match a taker against the opposite side, then rest or expire its remainder."""
        book = self.book
        is_buy = taker.is_buy
        user_id = taker.user_id
        limit_ticks = taker.price_ticks
        qutl = self._quote_units_per_tick_lot
        bupl = self._base_units_per_lot
        base_asset = self._base_asset
        quote_asset = self._quote_asset
        taker_bps = self.taker_fee_bps
        maker_bps = self.maker_fee_bps
        check_stp = stp != STP_NONE
        taker_side = BUY if is_buy else SELL
        maker_side = SELL if is_buy else BUY
        keys = opposite.keys
        levels = opposite.levels
        sign = -1 if is_buy else 1  # opposite key -> price (asks store minus the price)

        updates: list[OrderUpdate] = []
        fills: list[Fill] = []
        deltas: dict[tuple[str, str], list[int]] = {}
        # The taker's own entries come first in the deltas, in a fixed order.
        taker_quote = deltas[(user_id, quote_asset)] = [0, 0]
        taker_base = deltas[(user_id, base_asset)] = [0, 0]
        touched: list[tuple[Side, int, PriceLevel]] = []
        fee_base = fee_quote = 0
        lots_left = taker.remaining_lots
        executed_lots = executed_quote = 0
        taker_consumed = 0  # units of the taker's own lock its fills used up
        trade_id = self.last_trade_id
        stop = 0

        while lots_left > 0 and keys:
            price = sign * keys[-1]
            if limit_ticks is not None and (price > limit_ticks if is_buy else price < limit_ticks):
                break
            level = levels[price]
            lots_before = level.total_lots
            unit = price * qutl  # quote units per lot at this price
            done: list[Order] = []  # makers leaving the level: always a prefix of its queue
            for maker in level.orders.values():
                if check_stp and maker.user_id == user_id:
                    if stp != STP_TAKER:  # expire_maker or expire_both
                        level.total_lots -= maker.remaining_lots
                        updates.append(self._terminate_resting(maker, EXPIRED, REASON_STP, deltas))
                        done.append(maker)
                    if stp != STP_MAKER:  # expire_taker or expire_both
                        stop = _STOP_STP
                        break
                    continue
                q = maker.remaining_lots
                if q > lots_left:
                    q = lots_left
                if budget_units is not None:
                    affordable = (budget_units - executed_quote) // unit
                    if affordable == 0:
                        stop = _STOP_BUDGET
                        break
                    if q > affordable:
                        q = affordable
                quote_units = unit * q
                base_units = bupl * q
                trade_id += 1
                lots_left -= q
                executed_lots += q
                executed_quote += quote_units
                maker.remaining_lots -= q
                maker.executed_lots += q
                maker.executed_quote_units += quote_units
                level.total_lots -= q
                maker_user = maker.user_id
                # fee_units(), inlined: ceil(received * bps / 10000)
                if is_buy:
                    buyer_fee = -((-base_units * taker_bps) // 10000)
                    seller_fee = -((-quote_units * maker_bps) // 10000)
                    # Taker buys: it gives up what it locked for these lots at its own limit
                    # (or the exact cost for a market buy); the price improvement is released.
                    consumed = limit_ticks * qutl * q if limit_ticks is not None else quote_units
                    taker_consumed += consumed
                    taker_quote[1] -= consumed
                    taker_quote[0] += consumed - quote_units
                    taker_base[0] += base_units - buyer_fee
                    maker.locked_remaining -= base_units
                    # (_add_delta, inlined) the maker sells: base leaves its lock, quote in
                    entry = deltas.get((maker_user, base_asset))
                    if entry is None:
                        deltas[(maker_user, base_asset)] = [0, -base_units]
                    else:
                        entry[1] -= base_units
                    entry = deltas.get((maker_user, quote_asset))
                    if entry is None:
                        deltas[(maker_user, quote_asset)] = [quote_units - seller_fee, 0]
                    else:
                        entry[0] += quote_units - seller_fee
                else:
                    buyer_fee = -((-base_units * maker_bps) // 10000)
                    seller_fee = -((-quote_units * taker_bps) // 10000)
                    taker_consumed += base_units
                    taker_base[1] -= base_units
                    taker_quote[0] += quote_units - seller_fee
                    # A resting buy locked at its own price, which is the trade price.
                    maker.locked_remaining -= quote_units
                    # (_add_delta, inlined) the maker buys: quote leaves its lock, base in
                    entry = deltas.get((maker_user, quote_asset))
                    if entry is None:
                        deltas[(maker_user, quote_asset)] = [0, -quote_units]
                    else:
                        entry[1] -= quote_units
                    entry = deltas.get((maker_user, base_asset))
                    if entry is None:
                        deltas[(maker_user, base_asset)] = [base_units - buyer_fee, 0]
                    else:
                        entry[0] += base_units - buyer_fee
                fee_base += buyer_fee
                fee_quote += seller_fee
                fills.append(
                    Fill(
                        trade_id,
                        price,
                        q,
                        base_units,
                        quote_units,
                        taker_side,
                        taker.order_id,
                        user_id,
                        maker.order_id,
                        maker_user,
                        buyer_fee,
                        seller_fee,
                    )
                )
                if maker.remaining_lots == 0:
                    done.append(maker)
                    # Release anything locked beyond what the fills consumed.
                    extra = maker.locked_remaining
                    if extra:
                        maker.locked_remaining = 0
                        _add_delta(
                            deltas,
                            maker_user,
                            quote_asset if maker.is_buy else base_asset,
                            extra,
                            -extra,
                        )
                    status = FILLED
                else:
                    status = PARTIAL
                updates.append(
                    OrderUpdate(
                        maker.order_id,
                        maker_user,
                        maker_side,
                        status,
                        maker.executed_lots,
                        maker.executed_quote_units,
                        maker.remaining_lots,
                    )
                )
                if lots_left == 0:
                    break
                if status is PARTIAL:
                    # The maker still has lots, so the budget cut this fill short: the taker
                    # must not walk past a maker it could not finish (FIFO).
                    stop = _STOP_BUDGET
                    break
            if done:
                orders = level.orders
                for maker in done:
                    del orders[maker.order_id]
                    book.unindex(maker)
                if not orders:
                    opposite.drop_level(price)
            if level.total_lots != lots_before:
                touched.append((maker_side, price, level))
            if stop:
                break

        self.last_trade_id = trade_id
        taker.remaining_lots = lots_left
        taker.executed_lots = executed_lots
        taker.executed_quote_units = executed_quote
        taker.locked_remaining -= taker_consumed

        # The taker's end: filled, rested, or expired.
        reason = None
        rests = False
        if stop == _STOP_STP:
            status = EXPIRED
            reason = REASON_STP
        elif lots_left == 0 and executed_lots:
            status = FILLED  # (a budget too small for one lot starts with lots_left == 0)
        elif stop == _STOP_BUDGET and cmd.quantity_lots is None and executed_lots > 0:
            status = FILLED  # a budget-only market buy spent what it could
        elif limit_ticks is not None and cmd.time_in_force == GTC:
            rests = True
            status = PARTIAL if executed_lots else NEW
        else:
            status = EXPIRED
        if rests:
            own_level = book.rest(taker)
            touched.append((taker_side, limit_ticks, own_level))  # type: ignore[arg-type]
            remaining = lots_left
        else:
            remaining = 0
            release = taker.locked_remaining
            if release:
                taker.locked_remaining = 0
                entry = taker_quote if is_buy else taker_base
                entry[0] += release
                entry[1] -= release
        if fee_base:
            _add_delta(deltas, FEE_ACCOUNT, base_asset, fee_base, 0)
        if fee_quote:
            _add_delta(deltas, FEE_ACCOUNT, quote_asset, fee_quote, 0)

        order_update = OrderUpdate(
            taker.order_id,
            user_id,
            taker_side,
            status,
            executed_lots,
            executed_quote,
            remaining,
            reason,
        )
        updates.insert(0, order_update)
        return CommandResult(
            self.seq,
            ts_ms,
            True,
            None,
            order_update,
            updates,
            fills,
            _delta_list(deltas),
            [(side, p, lvl.total_lots) for side, p, lvl in touched],
        )

