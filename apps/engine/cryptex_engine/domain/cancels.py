"""Cancels of the matching core (a part of `MatchingEngine`; invariants in matching.py)."""

from __future__ import annotations

from cryptex_common.errors import ErrorCode
from cryptex_engine.domain.book import PriceLevel
from cryptex_engine.domain.commands import BalanceDelta, CancelAll, CancelOrder, CommandResult, OrderUpdate
from cryptex_engine.domain.state import BUY, CANCELLED, CLOSED, HALTED, SELL, EngineState


class Cancels(EngineState):
    __slots__ = ()

    def _cancel_gate(self) -> str | None:
        state = self.state
        if state is HALTED or state is CLOSED:
            return ErrorCode.MARKET_HALTED.value
        return None

    def _cancel(self, cmd: CancelOrder, ts_ms: int) -> CommandResult:
        state = self.state
        if state is HALTED or state is CLOSED:
            return CommandResult.refused(self.seq, ts_ms, ErrorCode.MARKET_HALTED.value)
        book = self.book
        order = book.orders.get(cmd.order_id)
        # Another user's order answers exactly like an unknown one: existence is not leaked.
        if order is None or order.user_id != cmd.user_id:
            return CommandResult.refused(self.seq, ts_ms, ErrorCode.ORDER_NOT_FOUND.value)
        # (OrderBook.remove and _terminate_resting, inlined: cancels are a third of traffic.)
        is_buy = order.is_buy
        price = order.price_ticks
        book_side = book.bids if is_buy else book.asks
        level = book_side.levels[price]  # type: ignore[index]
        del level.orders[order.order_id]
        level.total_lots -= order.remaining_lots
        if not level.orders:
            book_side.drop_level(price)  # type: ignore[arg-type]
        book.unindex(order)
        release = order.locked_remaining
        order.locked_remaining = 0
        side = BUY if is_buy else SELL
        deltas = (
            [
                BalanceDelta(
                    order.user_id,
                    self._quote_asset if is_buy else self._base_asset,
                    release,
                    -release,
                )
            ]
            if release
            else []
        )
        update = OrderUpdate(
            order.order_id,
            order.user_id,
            side,
            CANCELLED,
            order.executed_lots,
            order.executed_quote_units,
            0,
        )
        depth_change = (side, price, level.total_lots)
        return CommandResult.cancelled(self.seq, ts_ms, update, [update], deltas, [depth_change])  # type: ignore[list-item]

    def _cancel_all(self, cmd: CancelAll, ts_ms: int) -> CommandResult:
        reason = self._cancel_gate()
        if reason is not None:
            return CommandResult.refused(self.seq, ts_ms, reason)
        book = self.book
        user_id = cmd.user_id
        mine = book.by_user.pop(user_id, None)
        updates: list[OrderUpdate] = []
        touched: dict[tuple[bool, int], PriceLevel] = {}
        release_quote = release_base = 0
        # Arrival order: the user index keeps it, so the updates list is deterministic.
        for order in mine.values() if mine else ():
            is_buy = order.is_buy
            price: int = order.price_ticks  # type: ignore[assignment]
            book_side = book.bids if is_buy else book.asks
            level = book_side.levels[price]
            del level.orders[order.order_id]
            level.total_lots -= order.remaining_lots
            if not level.orders:
                book_side.drop_level(price)
            del book.orders[order.order_id]
            touched[(is_buy, price)] = level
            if is_buy:
                release_quote += order.locked_remaining
            else:
                release_base += order.locked_remaining
            order.locked_remaining = 0
            updates.append(
                OrderUpdate(
                    order.order_id,
                    user_id,
                    BUY if is_buy else SELL,
                    CANCELLED,
                    order.executed_lots,
                    order.executed_quote_units,
                    0,
                )
            )
        deltas = []
        if release_quote:
            deltas.append(BalanceDelta(user_id, self._quote_asset, release_quote, -release_quote))
        if release_base:
            deltas.append(BalanceDelta(user_id, self._base_asset, release_base, -release_base))
        depth_changes = [
            (BUY if is_buy else SELL, price, level.total_lots) for (is_buy, price), level in touched.items()
        ]
        return CommandResult.cancelled(self.seq, ts_ms, None, updates, deltas, depth_changes)

