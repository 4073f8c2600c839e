"""A deliberately naive reference order book for property tests of the matching engine.

Written straight from the rules, for clarity rather than speed: one list of resting orders
in arrival order, a linear scan (a stable sort) to find the best maker before every single
fill, a dict ledger of (available, locked) per user and asset that moves money fill by fill,
and FOK done by running the order as IOC on a deep copy and keeping the copy only when the
order filled completely. It shares no code with `cryptex_engine.domain`.

The test harness plays the API: before a place it calls `api_lock` (and does the same in the
engine's ledger), then both see the command.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import MarketRules

FEE_USER = FEE_ACCOUNT


@dataclass
class RefOrder:
    order_id: int
    user_id: str
    side: str  # "buy" / "sell"
    price: int | None
    quantity: int
    remaining: int
    locked: int  # what is still locked for it
    executed: int = 0
    executed_quote: int = 0
    status: str = "new"
    reason: str | None = None


@dataclass
class RefFill:
    trade_id: int
    price: int
    quantity: int
    taker_order_id: int
    maker_order_id: int
    taker_user_id: str
    maker_user_id: str
    buyer_fee: int
    seller_fee: int


@dataclass
class RefResult:
    accepted: bool
    reject_reason: str | None = None
    fills: list[RefFill] = field(default_factory=list)
    # order id -> (status, executed_lots, executed_quote_units, remaining_lots, reason)
    orders: dict[int, tuple[str, int, int, int, str | None]] = field(default_factory=dict)


def ceil_fee(received: int, bps: int) -> int:
    return (received * bps + 9999) // 10000


class ReferenceBook:
    def __init__(self, rules: MarketRules) -> None:
        self.rules = rules
        self.state = "halted"
        self.maker_bps = 0
        self.taker_bps = 0
        self.last_trade_id = 0
        self.resting: list[RefOrder] = []  # arrival order
        self.balances: dict[tuple[str, str], list[int]] = {}

    # --- ledger ----------------------------------------------------------------------------
    def _move(self, user: str, asset: str, available: int, locked: int) -> None:
        entry = self.balances.setdefault((user, asset), [0, 0])
        entry[0] += available
        entry[1] += locked

    def deposit(self, user: str, asset: str, units: int) -> None:
        self._move(user, asset, units, 0)

    def api_lock(self, user: str, asset: str, units: int) -> None:
        self._move(user, asset, -units, units)

    def _asset_locked_by(self, side: str) -> str:
        return self.rules.quote_asset if side == "buy" else self.rules.base_asset

    def _release(self, order: RefOrder) -> None:
        if order.locked:
            self._move(order.user_id, self._asset_locked_by(order.side), order.locked, -order.locked)
            order.locked = 0

    # --- queries ---------------------------------------------------------------------------
    def book_view(self) -> list[tuple[str, int, list[tuple[int, int]]]]:
        """[(side, price, [(order_id, remaining), ...FIFO]), ...] bids best-first then asks."""
        out = []
        for side, best_first in (("buy", True), ("sell", False)):
            prices = sorted({o.price for o in self.resting if o.side == side}, reverse=best_first)
            for price in prices:
                queue = [(o.order_id, o.remaining) for o in self.resting if o.side == side and o.price == price]
                out.append((side, price, queue))  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    # --- commands ----------------------------------------------------------------------------
    def configure(self, state: str, maker_bps: int, taker_bps: int) -> RefResult:
        self.state = state
        self.maker_bps = maker_bps
        self.taker_bps = taker_bps
        return RefResult(True)

    def cancel(self, order_id: int, user_id: str) -> RefResult:
        if self.state in ("halted", "closed"):
            return RefResult(False, "MARKET_HALTED")
        for o in self.resting:
            if o.order_id == order_id and o.user_id == user_id:
                self.resting.remove(o)
                self._release(o)
                o.status = "cancelled"
                return RefResult(True, orders={o.order_id: self._row(o)})
        return RefResult(False, "ORDER_NOT_FOUND")

    def cancel_all(self, user_id: str) -> RefResult:
        if self.state in ("halted", "closed"):
            return RefResult(False, "MARKET_HALTED")
        result = RefResult(True)
        for o in [o for o in self.resting if o.user_id == user_id]:
            self.resting.remove(o)
            self._release(o)
            o.status = "cancelled"
            result.orders[o.order_id] = self._row(o)
        return result

    @staticmethod
    def _row(o: RefOrder) -> tuple[str, int, int, int, str | None]:
        terminal = o.status in ("filled", "cancelled", "expired", "rejected")
        return (o.status, o.executed, o.executed_quote, 0 if terminal else o.remaining, o.reason)

    def _reject(self, p: dict, reason: str) -> RefResult:
        asset = self._asset_locked_by(p["side"])
        if p["locked_units"] > 0:
            self._move(p["user_id"], asset, p["locked_units"], -p["locked_units"])
        return RefResult(False, reason, orders={p["order_id"]: ("rejected", 0, 0, 0, reason)})

    def place(self, p: dict) -> RefResult:
        """`p` holds the PlaceOrder fields as plain values (side/type/tif/stp as strings)."""
        reason = self._gate_reason(p) or self._shape_reason(p) or self._size_reason(p)
        if reason is not None:
            return self._reject(p, reason)
        is_limit = p["order_type"] == "limit"
        price = p["price_ticks"]
        opposite_side = "sell" if p["side"] == "buy" else "buy"
        opposite = [o for o in self.resting if o.side == opposite_side]
        if is_limit and p["post_only"]:
            crosses = any((o.price <= price) if p["side"] == "buy" else (o.price >= price) for o in opposite)
            if crosses:
                return self._reject(p, "POST_ONLY_WOULD_TAKE")
        if not is_limit and not opposite:
            taker = self._new_taker(p, p["quantity_lots"] or 0)
            return self._expire(taker, "NO_LIQUIDITY")

        if p["time_in_force"] == "FOK":
            trial = copy.deepcopy(self)
            result = trial._match(p)
            if result.orders[p["order_id"]][0] != "filled":
                taker = self._new_taker(p, p["quantity_lots"])
                return self._expire(taker, "FOK_NOT_FILLABLE")
            self.__dict__.update(trial.__dict__)
            return result
        return self._match(p)

    def _gate_reason(self, p: dict) -> str | None:
        """The market's state: what it refuses to place."""
        if self.state in ("halted", "closed"):
            return "MARKET_HALTED"
        if self.state == "cancelOnly":
            return "MARKET_NOT_OPEN"
        if self.state == "postOnly" and not (p["order_type"] == "limit" and p["post_only"]):
            return "MARKET_NOT_OPEN"
        return None

    def _shape_reason(self, p: dict) -> str | None:
        """A known id, post-only off a GTC limit, missing or invalid fields."""
        is_limit = p["order_type"] == "limit"
        qty, budget, price = p["quantity_lots"], p["quote_budget_units"], p["price_ticks"]
        if any(o.order_id == p["order_id"] for o in self.resting):
            return "CONFLICT"
        if p["post_only"] and not (is_limit and p["time_in_force"] == "GTC"):
            return "INVALID_FIELD"
        if is_limit:
            if price is None or qty is None:
                return "MISSING_FIELD"
            return "INVALID_FIELD" if price <= 0 else None
        if p["side"] == "sell":
            return "MISSING_FIELD" if qty is None else None
        if qty is None and budget is None:
            return "MISSING_FIELD"
        if qty is None and p["time_in_force"] == "FOK":
            return "INVALID_FIELD"
        if budget is not None and budget <= 0:
            return "INVALID_FIELD"
        if qty is None and budget < self.rules.min_notional_units:
            return "NOTIONAL_TOO_SMALL"
        return None

    def _size_reason(self, p: dict) -> str | None:
        """Quantity bounds, the minimum notional of a limit, and funds locked."""
        rules = self.rules
        is_limit = p["order_type"] == "limit"
        qty, budget, price = p["quantity_lots"], p["quote_budget_units"], p["price_ticks"]
        if qty is not None and qty < max(1, rules.min_quantity_lots):
            return "QUANTITY_TOO_SMALL"
        if qty is not None and qty > rules.max_quantity_lots:
            return "QUANTITY_TOO_LARGE"
        if is_limit and rules.notional_units(price, qty) < rules.min_notional_units:
            return "NOTIONAL_TOO_SMALL"
        if p["side"] == "sell":
            need = rules.base_units(qty)
        elif is_limit:
            need = rules.notional_units(price, qty)
        else:
            need = budget if budget is not None else 1
        return "INSUFFICIENT_FUNDS" if p["locked_units"] < need else None

    def _new_taker(self, p: dict, qty: int) -> RefOrder:
        return RefOrder(p["order_id"], p["user_id"], p["side"], p["price_ticks"], qty, qty, p["locked_units"])

    def _expire(self, taker: RefOrder, reason: str | None) -> RefResult:
        self._release(taker)
        taker.status = "expired"
        taker.reason = reason
        return RefResult(True, orders={taker.order_id: self._row(taker)})

    def _match(self, p: dict) -> RefResult:
        rules = self.rules
        unit_q = rules.quote_units_per_tick_lot
        is_buy = p["side"] == "buy"
        is_limit = p["order_type"] == "limit"
        budget = None
        qty = p["quantity_lots"]
        if not is_limit and is_buy:
            budget = p["quote_budget_units"]
            if budget is None:
                budget = p["locked_units"]
            if qty is None:
                qty = min(budget // unit_q, rules.max_quantity_lots)
        taker = self._new_taker(p, qty)
        stp = p["stp"] or rules.default_stp.value
        result = RefResult(True)
        spent = 0
        stopped_by = None
        while taker.remaining > 0:
            maker = self._best_maker(taker, taker.price if is_limit else None)
            if maker is None:
                break
            if maker.user_id == taker.user_id and stp != "none":
                if self._self_trade(maker, stp, result):
                    stopped_by = "stp"
                    break
                continue
            q = min(maker.remaining, taker.remaining)
            if budget is not None:
                q = min(q, (budget - spent) // (maker.price * unit_q))
                if q == 0:
                    stopped_by = "budget"
                    break
            self._trade(taker, maker, q, result)
            spent += rules.notional_units(maker.price, q)
            result.orders[maker.order_id] = self._row(maker)
        self._end_taker(taker, p, stopped_by)
        result.orders[taker.order_id] = self._row(taker)
        return result

    def _best_maker(self, taker: RefOrder, limit: int | None) -> RefOrder | None:
        """The maker the taker meets next: best price, then earliest arrival (sorted() is
        stable); None when none is left within `limit` (None: a market order's, none)."""
        makers = [o for o in self.resting if o.side != taker.side]
        if not makers:
            return None
        is_buy = taker.side == "buy"
        maker = sorted(makers, key=lambda o: o.price if is_buy else -o.price)[0]
        if limit is not None and (maker.price > limit if is_buy else maker.price < limit):
            return None
        return maker

    def _self_trade(self, maker: RefOrder, stp: str, result: RefResult) -> bool:
        """The taker meets its own user's order: expire the maker or stop the taker (True)."""
        if stp in ("expire_maker", "expire_both"):
            self.resting.remove(maker)
            self._release(maker)
            maker.status = "expired"
            maker.reason = "SELF_TRADE_PREVENTED"
            result.orders[maker.order_id] = self._row(maker)
        return stp in ("expire_taker", "expire_both")

    def _end_taker(self, taker: RefOrder, p: dict, stopped_by: str | None) -> None:
        """Filled, rested (GTC limit) or expired; what it still locks is released unless it rests."""
        if stopped_by == "stp":
            taker.status, taker.reason = "expired", "SELF_TRADE_PREVENTED"
        elif (taker.remaining == 0 and taker.executed > 0) or (
            # a market buy by budget alone is done when the budget cannot buy one more lot
            stopped_by == "budget" and p["quantity_lots"] is None and taker.executed > 0
        ):
            taker.status = "filled"
        elif p["order_type"] == "limit" and p["time_in_force"] == "GTC":
            taker.status = "partially_filled" if taker.executed else "new"
            self.resting.append(taker)
        else:
            taker.status = "expired"
        if taker.status != "new" and taker.status != "partially_filled":
            self._release(taker)

    def _trade(self, taker: RefOrder, maker: RefOrder, q: int, result: RefResult) -> None:
        rules = self.rules
        price = maker.price
        assert price is not None
        base = rules.base_units(q)
        quote = rules.notional_units(price, q)
        buyer, seller = (taker, maker) if taker.side == "buy" else (maker, taker)
        buyer_bps = self.taker_bps if buyer is taker else self.maker_bps
        seller_bps = self.taker_bps if seller is taker else self.maker_bps
        buyer_fee = ceil_fee(base, buyer_bps)
        seller_fee = ceil_fee(quote, seller_bps)
        # Buyer: a limit buy locked at its own price; a market buy pays exactly the trade.
        buyer_lock_used = quote if buyer.price is None else rules.notional_units(buyer.price, q)
        self._move(buyer.user_id, rules.quote_asset, buyer_lock_used - quote, -buyer_lock_used)
        buyer.locked -= buyer_lock_used
        self._move(buyer.user_id, rules.base_asset, base - buyer_fee, 0)
        self._move(seller.user_id, rules.base_asset, 0, -base)
        seller.locked -= base
        self._move(seller.user_id, rules.quote_asset, quote - seller_fee, 0)
        self._move(FEE_USER, rules.base_asset, buyer_fee, 0)
        self._move(FEE_USER, rules.quote_asset, seller_fee, 0)
        for o in (taker, maker):
            o.remaining -= q
            o.executed += q
            o.executed_quote += quote
        maker.status = "filled" if maker.remaining == 0 else "partially_filled"
        if maker.remaining == 0:
            self.resting.remove(maker)
            self._release(maker)
        self.last_trade_id += 1
        result.fills.append(
            RefFill(
                self.last_trade_id,
                price,
                q,
                taker.order_id,
                maker.order_id,
                taker.user_id,
                maker.user_id,
                buyer_fee,
                seller_fee,
            )
        )
