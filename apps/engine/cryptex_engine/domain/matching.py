"""The matching core of one market: a pure, deterministic function of (rules, commands, ts).

`MatchingEngine.apply(cmd, ts_ms)` takes one command and returns a `CommandResult`. No I/O,
no clock, no randomness: the same rules and the same command sequence give the same results
and the same `state_hash()`, byte for byte.

Invariants (each has a test in tests/engine):
- `seq` grows by exactly 1 for every command, accepted or rejected; trade ids are 1, 2, 3...
  per market with no gap;
- price-time priority: best price first, FIFO by arrival inside a level; a trade executes at
  the maker's (resting order's) price;
- at rest the book is never crossed: best bid < best ask;
- only GTC limit orders rest; market orders and IOC/FOK remainders expire; a FOK order either
  fills completely or expires with no trade and no other effect;
- every order on the book has `locked_remaining` = what the API locked minus what its fills
  consumed; an order that becomes terminal releases its `locked_remaining`; a rejected place
  releases all of its `locked_units`;
- conservation: for every asset, the sum of (available + locked) deltas of one command over
  all users and the fee account is exactly 0;
- fees are ceil(received * bps / 10000), in the received asset (buyer: base, seller: quote),
  credited to `FEE_ACCOUNT`;
- halted and closed markets change nothing (every command but Configure is rejected);
- the mutable rules (min/max quantity, min notional, default STP) change only by a
  Configure, at its seq; `snapshot()` (hence `state_hash()`) holds the rules in force. A
  core built by `empty()` (the state before a stream's first command) holds
  `bootstrap_rules`, which no registry value decides: replaying a stream never depends on
  what the registry says today (docs/decisions/0010-sequenced-market-rules.md).

Decisions beyond the brief (see the engine's report / docs):
- post_only is only valid on a GTC limit order (else INVALID_FIELD);
- a market buy by quote budget alone cannot be FOK (INVALID_FIELD), and it may buy at most
  `max_quantity_lots`; it ends FILLED when it stopped because the budget (or that cap) ran
  out with something executed, EXPIRED when the book ran out first;
- a market buy's spending cap is `quote_budget_units` when given, else `locked_units`;
- a place whose order id is already on the book is rejected with CONFLICT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from cryptex_common.errors import ErrorCode
from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import MarketRules, MarketState, SelfTradePrevention
from cryptex_common.messages import OrderStatus, OrderType, Side, TimeInForce
from cryptex_engine.domain.book import BookSide, Order, OrderBook, PriceLevel
from cryptex_engine.domain.commands import (
    BalanceDelta,
    CancelAll,
    CancelOrder,
    CommandResult,
    Configure,
    EngineCommand,
    Fill,
    OrderUpdate,
    PlaceOrder,
    RejectOrder,
)

SNAPSHOT_FORMAT = 2  # 2: + "rules" (the mutable rules in force) and "rules_seq"
SNAPSHOT_FORMATS_READ = (1, 2)  # 1: no rules stored: restored with bootstrap rules
RULE_FIELDS = ("min_quantity_lots", "max_quantity_lots", "min_notional_units", "default_stp")
MAX_LOTS = 2**63 - 1  # bootstrap maxQuantity: no limit an int64 ledger could reach
SNAPSHOT_ORDER_FIELDS = (
    "order_id",
    "user_id",
    "side",
    "price_ticks",
    "quantity_lots",
    "remaining_lots",
    "executed_lots",
    "executed_quote_units",
    "locked_remaining",
    "client_order_id",
)

# Module constants: a local name lookup is cheaper than an attribute lookup in the hot path.
BUY, SELL = Side.BUY, Side.SELL
LIMIT = OrderType.LIMIT
GTC, FOK = TimeInForce.GTC, TimeInForce.FOK
NEW, PARTIAL, FILLED = OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED
CANCELLED, EXPIRED, REJECTED = OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED
STP_MAKER = SelfTradePrevention.EXPIRE_MAKER
STP_TAKER = SelfTradePrevention.EXPIRE_TAKER
STP_NONE = SelfTradePrevention.NONE
OPEN, POST_ONLY_STATE = MarketState.OPEN, MarketState.POST_ONLY
CANCEL_ONLY, HALTED, CLOSED = MarketState.CANCEL_ONLY, MarketState.HALTED, MarketState.CLOSED

REASON_STP = "SELF_TRADE_PREVENTED"
REASON_FOK = "FOK_NOT_FILLABLE"

# Why a matching walk stopped before the taker's lots ran out.
_STOP_BUDGET = 1
_STOP_STP = 2


def fee_units(received_units: int, bps: int) -> int:
    """ceil(received * bps / 10000): rounding is in the exchange's favour."""
    if bps == 0:
        return 0
    return -((-received_units * bps) // 10000)


def bootstrap_rules(rules: MarketRules) -> MarketRules:
    """`rules` with the mutable rules replaced by fixed values (min 1 lot, no maximum, no
    minimum notional, expire_maker): what a market's core holds before its stream's first
    configure carrying rules. Only the immutable grid comes from `rules`."""
    return dataclasses.replace(rules, min_quantity_lots=1, max_quantity_lots=MAX_LOTS,
                               min_notional_units=0, default_stp=STP_MAKER)


def _add_delta(deltas: dict[tuple[str, str], list[int]], user_id: str, asset: str, available: int, locked: int) -> None:
    entry = deltas.get((user_id, asset))
    if entry is None:
        deltas[(user_id, asset)] = [available, locked]
    else:
        entry[0] += available
        entry[1] += locked


def _delta_list(deltas: dict[tuple[str, str], list[int]]) -> list[BalanceDelta]:
    """First-touch order (dicts keep insertion order), zero entries dropped."""
    return [BalanceDelta(user_id, asset, av, lk) for (user_id, asset), (av, lk) in deltas.items() if av or lk]


class MatchingEngine:
    __slots__ = (
        "_base_asset",
        "_base_units_per_lot",
        "_quote_asset",
        "_quote_units_per_tick_lot",
        "book",
        "last_trade_id",
        "maker_fee_bps",
        "rules",
        "rules_seq",
        "seq",
        "state",
        "taker_fee_bps",
    )

    def __init__(self, rules: MarketRules) -> None:
        self.rules = rules
        self.rules_seq = 0  # the seq of the Configure that set the rules (0: never)
        self.state = MarketState.HALTED  # until the first Configure
        self.maker_fee_bps = 0
        self.taker_fee_bps = 0
        self.seq = 0
        self.last_trade_id = 0
        self.book = OrderBook()
        self._base_asset = rules.base_asset
        self._quote_asset = rules.quote_asset
        self._base_units_per_lot = rules.base_units_per_lot
        self._quote_units_per_tick_lot = rules.quote_units_per_tick_lot

    @classmethod
    def empty(cls, rules: MarketRules) -> MatchingEngine:
        """The core before a stream's first command: halted, with `bootstrap_rules`."""
        return cls(bootstrap_rules(rules))

    # --- the one entry point ---------------------------------------------------------------
    def apply(self, cmd: EngineCommand, ts_ms: int) -> CommandResult:
        """Apply one command. `seq` grows by exactly 1 whatever the outcome."""
        # Exact type checks (not isinstance): cheaper, and a subclass is not a command.
        if type(cmd) is PlaceOrder:
            self.seq += 1
            return self._place(cmd, ts_ms)
        if type(cmd) is CancelOrder:
            self.seq += 1
            return self._cancel(cmd, ts_ms)
        if type(cmd) is CancelAll:
            self.seq += 1
            return self._cancel_all(cmd, ts_ms)
        if type(cmd) is Configure:
            self.seq += 1
            return self._configure(cmd, ts_ms)
        if type(cmd) is RejectOrder:
            self.seq += 1
            return self._reject_unreadable(cmd, ts_ms)
        raise TypeError(f"not an engine command: {type(cmd).__name__}")

    # --- read-only views -------------------------------------------------------------------
    def depth(self, limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return self.book.bids.depth(limit), self.book.asks.depth(limit)

    def open_orders_count(self) -> int:
        return len(self.book.orders)

    def level_counts(self) -> tuple[int, int]:
        return len(self.book.bids.levels), len(self.book.asks.levels)

    def best_bid(self) -> int | None:
        return self.book.bids.best_price()

    def best_ask(self) -> int | None:
        return self.book.asks.best_price()

    # --- configure -------------------------------------------------------------------------
    def _configure(self, cmd: Configure, ts_ms: int) -> CommandResult:
        """State, fees and the rules given, all or nothing: a configure no MarketSpec could
        produce (min > max, a negative value) is rejected and changes nothing."""
        given = {f: getattr(cmd, f) for f in RULE_FIELDS if getattr(cmd, f) is not None}
        rules = dataclasses.replace(self.rules, **given) if given else self.rules
        if given and not (1 <= rules.min_quantity_lots <= rules.max_quantity_lots
                          and rules.min_notional_units >= 0):
            return CommandResult(self.seq, ts_ms, False, ErrorCode.INVALID_FIELD.value)
        if cmd.maker_fee_bps < 0 or cmd.taker_fee_bps < 0:
            return CommandResult(self.seq, ts_ms, False, ErrorCode.INVALID_FIELD.value)
        self.state = MarketState(cmd.state)
        self.maker_fee_bps = int(cmd.maker_fee_bps)
        self.taker_fee_bps = int(cmd.taker_fee_bps)
        if given:
            self.rules = dataclasses.replace(rules, default_stp=SelfTradePrevention(rules.default_stp))
            self.rules_seq = self.seq
        return CommandResult(self.seq, ts_ms, True)

    def _reject_unreadable(self, cmd: RejectOrder, ts_ms: int) -> CommandResult:
        """Close the order the API opened and give back exactly what its entry says was
        locked (any state: releasing a lock is never refused)."""
        update = OrderUpdate(cmd.order_id, cmd.user_id, cmd.side, REJECTED, 0, 0, 0, cmd.reason)
        units = cmd.locked_units
        deltas = [BalanceDelta(cmd.user_id, cmd.lock_asset, units, -units)] if units > 0 else []
        return CommandResult(self.seq, ts_ms, False, cmd.reason, update, [update], [], deltas)

    # --- cancels ---------------------------------------------------------------------------
    def _cancel_gate(self) -> str | None:
        state = self.state
        if state is HALTED or state is CLOSED:
            return ErrorCode.MARKET_HALTED.value
        return None

    def _cancel(self, cmd: CancelOrder, ts_ms: int) -> CommandResult:
        state = self.state
        if state is HALTED or state is CLOSED:
            return CommandResult(self.seq, ts_ms, False, ErrorCode.MARKET_HALTED.value)
        book = self.book
        order = book.orders.get(cmd.order_id)
        # Another user's order answers exactly like an unknown one: existence is not leaked.
        if order is None or order.user_id != cmd.user_id:
            return CommandResult(self.seq, ts_ms, False, ErrorCode.ORDER_NOT_FOUND.value)
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
        return CommandResult(
            self.seq,
            ts_ms,
            True,
            None,
            update,
            [update],
            [],
            deltas,
            [(side, price, level.total_lots)],  # type: ignore[list-item]
        )

    def _cancel_all(self, cmd: CancelAll, ts_ms: int) -> CommandResult:
        reason = self._cancel_gate()
        if reason is not None:
            return CommandResult(self.seq, ts_ms, False, reason)
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
        return CommandResult(self.seq, ts_ms, True, None, None, updates, [], deltas, depth_changes)

    def _terminate_resting(
        self,
        order: Order,
        status: OrderStatus,
        reason: str | None,
        deltas: dict[tuple[str, str], list[int]],
    ) -> OrderUpdate:
        """A resting order leaves the book unfilled (cancel, STP): release what it locks."""
        release = order.locked_remaining
        order.locked_remaining = 0
        if release:
            asset = self._quote_asset if order.is_buy else self._base_asset
            _add_delta(deltas, order.user_id, asset, release, -release)
        return OrderUpdate(
            order.order_id,
            order.user_id,
            BUY if order.is_buy else SELL,
            status,
            order.executed_lots,
            order.executed_quote_units,
            0,
            reason,
        )

    # --- place -----------------------------------------------------------------------------
    def _place_gate(self, cmd: PlaceOrder) -> str | None:
        state = self.state
        if state == OPEN:
            return None
        if state == POST_ONLY_STATE:
            if cmd.post_only and cmd.order_type == LIMIT:
                return None
            return ErrorCode.MARKET_NOT_OPEN.value
        if state == CANCEL_ONLY:
            return ErrorCode.MARKET_NOT_OPEN.value
        return ErrorCode.MARKET_HALTED.value

    def _check_place(self, cmd: PlaceOrder) -> str | None:
        """The order's shape and funds. The API checks the same; the engine stays safe alone."""
        rules = self.rules
        if cmd.order_id in self.book.orders:
            return ErrorCode.CONFLICT.value
        is_limit = cmd.order_type == LIMIT
        is_buy = cmd.side == BUY
        qty = cmd.quantity_lots
        budget = cmd.quote_budget_units
        if cmd.post_only and not (is_limit and cmd.time_in_force == GTC):
            return ErrorCode.INVALID_FIELD.value
        if is_limit:
            if cmd.price_ticks is None or qty is None:
                return ErrorCode.MISSING_FIELD.value
            if cmd.price_ticks <= 0:
                return ErrorCode.INVALID_FIELD.value
        elif is_buy:
            if qty is None:
                if budget is None:
                    return ErrorCode.MISSING_FIELD.value
                if cmd.time_in_force == FOK:
                    return ErrorCode.INVALID_FIELD.value
            if budget is not None and budget <= 0:
                return ErrorCode.INVALID_FIELD.value
            if qty is None and budget is not None and budget < rules.min_notional_units:
                return ErrorCode.NOTIONAL_TOO_SMALL.value  # (the API's check on quoteQuantity)
        elif qty is None:
            return ErrorCode.MISSING_FIELD.value
        if qty is not None:
            if qty < rules.min_quantity_lots or qty < 1:
                return ErrorCode.QUANTITY_TOO_SMALL.value
            if qty > rules.max_quantity_lots:
                return ErrorCode.QUANTITY_TOO_LARGE.value
        if is_limit:
            notional = cmd.price_ticks * qty * self._quote_units_per_tick_lot  # type: ignore[operator]
            if notional < rules.min_notional_units:
                return ErrorCode.NOTIONAL_TOO_SMALL.value
            need = notional if is_buy else qty * self._base_units_per_lot  # type: ignore[operator]
        elif is_buy:
            need = budget if budget is not None else 1
        else:
            need = qty * self._base_units_per_lot  # type: ignore[operator]
        if cmd.locked_units < need:
            return ErrorCode.INSUFFICIENT_FUNDS.value
        return None

    def _reject_place(self, cmd: PlaceOrder, ts_ms: int, reason: str) -> CommandResult:
        update = OrderUpdate(cmd.order_id, cmd.user_id, cmd.side, REJECTED, 0, 0, 0, reason)
        deltas = []
        if cmd.locked_units > 0:
            asset = self._quote_asset if cmd.side == BUY else self._base_asset
            deltas.append(BalanceDelta(cmd.user_id, asset, cmd.locked_units, -cmd.locked_units))
        return CommandResult(self.seq, ts_ms, False, reason, update, [update], [], deltas)

    def _expire_unmatched(self, cmd: PlaceOrder, ts_ms: int, reason: str | None) -> CommandResult:
        """An accepted order that expires before touching the book (FOK, empty book)."""
        update = OrderUpdate(cmd.order_id, cmd.user_id, cmd.side, EXPIRED, 0, 0, 0, reason)
        deltas = []
        if cmd.locked_units > 0:
            asset = self._quote_asset if cmd.side == BUY else self._base_asset
            deltas.append(BalanceDelta(cmd.user_id, asset, cmd.locked_units, -cmd.locked_units))
        return CommandResult(self.seq, ts_ms, True, None, update, [update], [], deltas)

    def _place(self, cmd: PlaceOrder, ts_ms: int) -> CommandResult:
        # `state` is always a MarketState member (Configure and restore coerce it).
        reason = self._place_gate(cmd) if self.state is not OPEN else None
        if reason is None:
            reason = self._check_place(cmd)
        if reason is not None:
            return self._reject_place(cmd, ts_ms, reason)

        book = self.book
        side = cmd.side
        is_buy = side == BUY
        opposite = book.asks if is_buy else book.bids
        best = opposite.best_price()

        if cmd.order_type == LIMIT:
            # _check_place guarantees both for a limit order.
            price: int = cmd.price_ticks  # type: ignore[assignment]
            qty: int = cmd.quantity_lots  # type: ignore[assignment]
            crosses = best is not None and (best <= price if is_buy else best >= price)
            if not crosses and cmd.time_in_force == GTC:
                # The common case: a maker order that just rests. No fill, no balance change.
                # (OrderBook.rest, inlined: this is the hottest path of the engine.)
                order_id = cmd.order_id
                user_id = cmd.user_id
                own = book.bids if is_buy else book.asks
                level = own.levels.get(price)
                if level is None:
                    level = own.level_for_insert(price)
                # The level's price object is shared: one int per level, not one per order.
                order = Order(
                    order_id,
                    user_id,
                    is_buy,
                    level.price_ticks,
                    qty,
                    cmd.locked_units,
                    cmd.client_order_id,
                )
                level.orders[order_id] = order
                level.total_lots += qty
                book.orders[order_id] = order
                mine = book.by_user.get(user_id)
                if mine is None:
                    book.by_user[user_id] = {order_id: order}
                else:
                    mine[order_id] = order
                update = OrderUpdate(order_id, user_id, side, NEW, 0, 0, qty)
                return CommandResult(
                    self.seq,
                    ts_ms,
                    True,
                    None,
                    update,
                    [update],
                    [],
                    [],
                    [(side, price, level.total_lots)],
                )
            if crosses and cmd.post_only:
                return self._reject_place(cmd, ts_ms, ErrorCode.POST_ONLY_WOULD_TAKE.value)
            lots = qty
            limit_ticks: int | None = price
            budget = None
        else:
            limit_ticks = None
            if best is None:
                return self._expire_unmatched(cmd, ts_ms, ErrorCode.NO_LIQUIDITY.value)
            # A market sell and a market buy without a budget have a quantity (validated).
            lots = cmd.quantity_lots  # type: ignore[assignment]
            budget = None
            if is_buy:
                budget = cmd.quote_budget_units
                if budget is None:
                    budget = cmd.locked_units
                if lots is None:
                    # Price is at least one tick, so the budget can never buy more than this.
                    lots = min(budget // self._quote_units_per_tick_lot, self.rules.max_quantity_lots)

        stp = cmd.stp if cmd.stp is not None else self.rules.default_stp
        if cmd.time_in_force == FOK and not self._fok_fillable(
            opposite,
            cmd.user_id,
            is_buy,
            lots,
            limit_ticks,
            budget,
            stp,
        ):
            return self._expire_unmatched(cmd, ts_ms, REASON_FOK)

        taker = Order(
            cmd.order_id,
            cmd.user_id,
            is_buy,
            limit_ticks,
            lots,
            cmd.locked_units,
            cmd.client_order_id,
        )
        return self._execute(cmd, taker, opposite, budget, stp, ts_ms)

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

    # --- snapshot / restore ----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data: everything needed to continue exactly where this engine is.

        Orders are listed in arrival order, which is FIFO order inside every level and the
        order CancelAll walks, so a restored engine behaves identically."""
        return {
            "format": SNAPSHOT_FORMAT,
            "symbol": self.rules.symbol,
            "seq": self.seq,
            "last_trade_id": self.last_trade_id,
            "state": self.state.value,
            "maker_fee_bps": self.maker_fee_bps,
            "taker_fee_bps": self.taker_fee_bps,
            "rules": {
                "min_quantity_lots": self.rules.min_quantity_lots,
                "max_quantity_lots": self.rules.max_quantity_lots,
                "min_notional_units": self.rules.min_notional_units,
                "default_stp": self.rules.default_stp.value,
            },
            "rules_seq": self.rules_seq,
            "order_fields": list(SNAPSHOT_ORDER_FIELDS),
            "orders": [
                [
                    o.order_id,
                    o.user_id,
                    "buy" if o.is_buy else "sell",
                    o.price_ticks,
                    o.quantity_lots,
                    o.remaining_lots,
                    o.executed_lots,
                    o.executed_quote_units,
                    o.locked_remaining,
                    o.client_order_id,
                ]
                for o in self.book.orders.values()
            ],
        }

    @classmethod
    def restore(cls, rules: MarketRules, snapshot: dict[str, Any]) -> MatchingEngine:
        """`rules` supplies the immutable grid only: the mutable rules come from the
        snapshot (format 1, written before they were stored: `bootstrap_rules`)."""
        fmt = snapshot.get("format")
        if fmt not in SNAPSHOT_FORMATS_READ:
            raise ValueError(f"unknown snapshot format {fmt!r}")
        if snapshot["symbol"] != rules.symbol:
            raise ValueError(f"snapshot is for {snapshot['symbol']}, not {rules.symbol}")
        if list(snapshot["order_fields"]) != list(SNAPSHOT_ORDER_FIELDS):
            raise ValueError("snapshot order fields do not match this engine")
        engine = cls.empty(rules)
        if fmt >= 2:
            stored = snapshot["rules"]
            engine.rules = dataclasses.replace(
                engine.rules, min_quantity_lots=int(stored["min_quantity_lots"]),
                max_quantity_lots=int(stored["max_quantity_lots"]),
                min_notional_units=int(stored["min_notional_units"]),
                default_stp=SelfTradePrevention(stored["default_stp"]))
            engine.rules_seq = int(snapshot["rules_seq"])
        engine.seq = int(snapshot["seq"])
        engine.last_trade_id = int(snapshot["last_trade_id"])
        engine.state = MarketState(snapshot["state"])
        engine.maker_fee_bps = int(snapshot["maker_fee_bps"])
        engine.taker_fee_bps = int(snapshot["taker_fee_bps"])
        for row in snapshot["orders"]:
            (oid, user_id, side, price, qty, remaining, ex_lots, ex_quote, locked, coid) = row
            if side not in ("buy", "sell") or price <= 0 or remaining <= 0:
                raise ValueError(f"snapshot order {oid} is not a valid resting order")
            if oid in engine.book.orders:
                raise ValueError(f"snapshot order {oid} appears twice")
            order = Order(oid, user_id, side == "buy", price, qty, locked, coid)
            order.remaining_lots = remaining
            order.executed_lots = ex_lots
            order.executed_quote_units = ex_quote
            engine.book.rest(order)
        return engine

    def state_hash(self) -> str:
        """sha256 over the canonical JSON of the snapshot: equal states, equal hashes."""
        canonical = json.dumps(self.snapshot(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()
