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
  credited to the fee account the core is given;
- halted and closed markets change nothing (every command but Configure is rejected);
- the mutable rules (min/max quantity, min notional, default STP) change only by a
  Configure, at its seq; `snapshot()` (hence `state_hash()`) holds the rules in force. A
  core built by `empty()` (the state before a stream's first command) holds
  `bootstrap_rules`, which no registry value decides: replaying a stream never depends on
  what the registry says today (docs/decisions/0010-sequenced-market-rules.md).

Further rules:
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
from cryptex_common.markets import MarketRules, MarketState, SelfTradePrevention
from cryptex_engine.domain.book import Order
from cryptex_engine.domain.cancels import Cancels
from cryptex_engine.domain.commands import (
    BalanceDelta,
    CancelAll,
    CancelOrder,
    CommandResult,
    Configure,
    EngineCommand,
    OrderUpdate,
    PlaceOrder,
    RejectOrder,
)
from cryptex_engine.domain.execution import Execution
from cryptex_engine.domain.state import (  # noqa: F401  (bootstrap_rules, fee_units: re-exported)
    BUY,
    CANCEL_ONLY,
    EXPIRED,
    FOK,
    GTC,
    LIMIT,
    NEW,
    OPEN,
    POST_ONLY_STATE,
    REASON_FOK,
    REJECTED,
    RULE_FIELDS,
    SNAPSHOT_FORMAT,
    SNAPSHOT_FORMATS_READ,
    SNAPSHOT_ORDER_FIELDS,
    bootstrap_rules,
    fee_units,
)


class MatchingEngine(Cancels, Execution):
    __slots__ = ()

    @classmethod
    def empty(cls, rules: MarketRules, fee_account: str) -> MatchingEngine:
        """The core before a stream's first command: halted, with `bootstrap_rules`."""
        return cls(bootstrap_rules(rules), fee_account)


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
            return CommandResult.refused(self.seq, ts_ms, ErrorCode.INVALID_FIELD.value)
        if cmd.maker_fee_bps < 0 or cmd.taker_fee_bps < 0:
            return CommandResult.refused(self.seq, ts_ms, ErrorCode.INVALID_FIELD.value)
        self.state = MarketState(cmd.state)
        self.maker_fee_bps = int(cmd.maker_fee_bps)
        self.taker_fee_bps = int(cmd.taker_fee_bps)
        if given:
            self.rules = dataclasses.replace(rules, default_stp=SelfTradePrevention(rules.default_stp))
            self.rules_seq = self.seq
        return CommandResult.applied(self.seq, ts_ms)

    def _reject_unreadable(self, cmd: RejectOrder, ts_ms: int) -> CommandResult:
        """Close the order the API opened and give back exactly what its entry says was
        locked (any state: releasing a lock is never refused)."""
        update = OrderUpdate(cmd.order_id, cmd.user_id, cmd.side, REJECTED, 0, 0, 0, cmd.reason)
        units = cmd.locked_units
        deltas = [BalanceDelta(cmd.user_id, cmd.lock_asset, units, -units)] if units > 0 else []
        return CommandResult.rejected(self.seq, ts_ms, cmd.reason, update, deltas)

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

    def _check_market(self, cmd: PlaceOrder) -> str | None:
        """A market order's shape and funds. The API checks the same; the engine stays safe
        alone. The first rule broken names the reason, in this order (limits alike): a known
        order id, post-only (GTC limits only), missing or invalid fields, quantity bounds,
        notional, funds."""
        if cmd.order_id in self.book.orders:
            return ErrorCode.CONFLICT.value
        if cmd.post_only:
            return ErrorCode.INVALID_FIELD.value
        if cmd.side == BUY:
            return self._check_market_buy(cmd)
        qty = cmd.quantity_lots
        if qty is None:
            return ErrorCode.MISSING_FIELD.value
        reason = self._check_quantity(qty)
        if reason is None and cmd.locked_units < qty * self._base_units_per_lot:
            return ErrorCode.INSUFFICIENT_FUNDS.value
        return reason

    def _check_limit(self, cmd: PlaceOrder) -> str | None:
        """A limit order's shape and funds (in `_check_market`'s order)."""
        if cmd.order_id in self.book.orders:
            return ErrorCode.CONFLICT.value
        price, qty = cmd.price_ticks, cmd.quantity_lots
        if cmd.post_only and cmd.time_in_force != GTC:
            return ErrorCode.INVALID_FIELD.value
        if price is None or qty is None:
            return ErrorCode.MISSING_FIELD.value
        if price <= 0:
            return ErrorCode.INVALID_FIELD.value
        rules = self.rules
        if qty < rules.min_quantity_lots or qty < 1:  # (_check_quantity, inlined: every limit order)
            return ErrorCode.QUANTITY_TOO_SMALL.value
        if qty > rules.max_quantity_lots:
            return ErrorCode.QUANTITY_TOO_LARGE.value
        notional = price * qty * self._quote_units_per_tick_lot
        if notional < rules.min_notional_units:
            return ErrorCode.NOTIONAL_TOO_SMALL.value
        need = notional if cmd.side == BUY else qty * self._base_units_per_lot
        if cmd.locked_units < need:
            return ErrorCode.INSUFFICIENT_FUNDS.value
        return None

    def _check_market_buy(self, cmd: PlaceOrder) -> str | None:
        """By quantity, by quote budget, or both (the budget caps what it spends)."""
        qty, budget = cmd.quantity_lots, cmd.quote_budget_units
        if qty is None:
            if budget is None:
                return ErrorCode.MISSING_FIELD.value
            if cmd.time_in_force == FOK:
                return ErrorCode.INVALID_FIELD.value
        if budget is not None and budget <= 0:
            return ErrorCode.INVALID_FIELD.value
        if qty is None:
            if budget < self.rules.min_notional_units:  # type: ignore[operator]
                return ErrorCode.NOTIONAL_TOO_SMALL.value  # (the API's check on quoteQuantity)
        else:
            reason = self._check_quantity(qty)
            if reason is not None:
                return reason
        if cmd.locked_units < (budget if budget is not None else 1):
            return ErrorCode.INSUFFICIENT_FUNDS.value
        return None

    def _check_quantity(self, qty: int) -> str | None:
        rules = self.rules
        if qty < rules.min_quantity_lots or qty < 1:
            return ErrorCode.QUANTITY_TOO_SMALL.value
        if qty > rules.max_quantity_lots:
            return ErrorCode.QUANTITY_TOO_LARGE.value
        return None

    def _reject_place(self, cmd: PlaceOrder, ts_ms: int, reason: str) -> CommandResult:
        update = OrderUpdate(cmd.order_id, cmd.user_id, cmd.side, REJECTED, 0, 0, 0, reason)
        deltas = []
        if cmd.locked_units > 0:
            asset = self._quote_asset if cmd.side == BUY else self._base_asset
            deltas.append(BalanceDelta(cmd.user_id, asset, cmd.locked_units, -cmd.locked_units))
        return CommandResult.rejected(self.seq, ts_ms, reason, update, deltas)

    def _expire_unmatched(self, cmd: PlaceOrder, ts_ms: int, reason: str | None) -> CommandResult:
        """An accepted order that expires before touching the book (FOK, empty book)."""
        update = OrderUpdate(cmd.order_id, cmd.user_id, cmd.side, EXPIRED, 0, 0, 0, reason)
        deltas = []
        if cmd.locked_units > 0:
            asset = self._quote_asset if cmd.side == BUY else self._base_asset
            deltas.append(BalanceDelta(cmd.user_id, asset, cmd.locked_units, -cmd.locked_units))
        return CommandResult.expired(self.seq, ts_ms, update, deltas)

    def _place(self, cmd: PlaceOrder, ts_ms: int) -> CommandResult:
        # `state` is always a MarketState member (Configure and restore coerce it).
        reason = self._place_gate(cmd) if self.state is not OPEN else None
        if reason is None:
            reason = self._check_limit(cmd) if cmd.order_type == LIMIT else self._check_market(cmd)
        if reason is not None:
            return self._reject_place(cmd, ts_ms, reason)

        book = self.book
        side = cmd.side
        is_buy = side == BUY
        opposite = book.asks if is_buy else book.bids
        keys = opposite.keys  # (BookSide.best_price, inlined: every order needs it)
        best = (-keys[-1] if is_buy else keys[-1]) if keys else None

        if cmd.order_type == LIMIT:
            # _check_limit guarantees both for a limit order.
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
                order = Order(order_id, user_id, is_buy, level.price_ticks, qty, cmd.locked_units,
                              cmd.client_order_id)
                level.orders[order_id] = order
                level.total_lots += qty
                book.orders[order_id] = order
                mine = book.by_user.get(user_id)
                if mine is None:
                    book.by_user[user_id] = {order_id: order}
                else:
                    mine[order_id] = order
                update = OrderUpdate(order_id, user_id, side, NEW, 0, 0, qty)
                return CommandResult.rested(self.seq, ts_ms, update, (side, price, level.total_lots))
            if crosses and cmd.post_only:
                return self._reject_place(cmd, ts_ms, ErrorCode.POST_ONLY_WOULD_TAKE.value)
            lots = qty
            limit_ticks: int | None = price
            budget = None
        else:
            if best is None:
                return self._expire_unmatched(cmd, ts_ms, ErrorCode.NO_LIQUIDITY.value)
            limit_ticks = None
            lots, budget = self._market_size(cmd)

        stp = cmd.stp if cmd.stp is not None else self.rules.default_stp
        if cmd.time_in_force == FOK and not self._fok_fillable(opposite, cmd.user_id, is_buy, lots, limit_ticks,
                                                                budget, stp):
            return self._expire_unmatched(cmd, ts_ms, REASON_FOK)
        return self._execute(cmd, is_buy, limit_ticks, lots, opposite, budget, stp, ts_ms)

    def _market_size(self, cmd: PlaceOrder) -> tuple[int, int | None]:
        """A market order's lots and spending cap (None for a sell). A market sell and a
        market buy without a budget have a quantity (validated); a buy's cap is its budget,
        else what it locked."""
        if cmd.side != BUY:
            return cmd.quantity_lots, None  # type: ignore[return-value]
        budget = cmd.quote_budget_units
        if budget is None:
            budget = cmd.locked_units
        lots = cmd.quantity_lots
        if lots is None:
            # Price is at least one tick, so the budget can never buy more than this.
            lots = min(budget // self._quote_units_per_tick_lot, self.rules.max_quantity_lots)
        return lots, budget

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
    def restore(cls, rules: MarketRules, snapshot: dict[str, Any], fee_account: str) -> MatchingEngine:
        """`rules` supplies the immutable grid only: the mutable rules come from the
        snapshot (format 1, written before they were stored: `bootstrap_rules`)."""
        fmt = snapshot.get("format")
        if fmt not in SNAPSHOT_FORMATS_READ:
            raise ValueError(f"unknown snapshot format {fmt!r}")
        if snapshot["symbol"] != rules.symbol:
            raise ValueError(f"snapshot is for {snapshot['symbol']}, not {rules.symbol}")
        if list(snapshot["order_fields"]) != list(SNAPSHOT_ORDER_FIELDS):
            raise ValueError("snapshot order fields do not match this engine")
        engine = cls.empty(rules, fee_account)
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
