"""Inputs and outputs of the matching core: plain dataclasses, integers only, no I/O.

The service turns stream entries into these commands and turns results into settle calls,
replies and market data. `seq` is the engine's gap-free per-market command sequence and
`ts_ms` is fixed before the command reaches the engine (the stream id's millisecond part).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptex_common.markets import MarketState, SelfTradePrevention
from cryptex_common.messages import OrderStatus, OrderType, Side, TimeInForce


@dataclass(slots=True)
class PlaceOrder:
    order_id: int
    user_id: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    post_only: bool
    price_ticks: int | None  # limit price; None for market orders
    quantity_lots: int | None  # None only for a market buy by quote budget
    quote_budget_units: int | None  # market buy: the most quote it may spend
    stp: SelfTradePrevention | None  # None -> the market's default
    locked_units: int  # what the API locked: quote for buys, base for sells
    client_order_id: str | None = None


@dataclass(slots=True)
class CancelOrder:
    order_id: int
    user_id: str


@dataclass(slots=True)
class CancelAll:
    user_id: str


@dataclass(slots=True)
class Configure:
    """State, fees and (when given) the mutable rules, in force from this command's seq.
    A rule left None keeps its value (a configure written before rules travelled)."""

    state: MarketState
    maker_fee_bps: int
    taker_fee_bps: int
    min_quantity_lots: int | None = None
    max_quantity_lots: int | None = None
    min_notional_units: int | None = None
    default_stp: SelfTradePrevention | None = None


@dataclass(slots=True)
class RejectOrder:
    """An order the engine cannot read (an undecodable or too new command) whose entry
    carries its id and lock envelope: rejected in sequence, its locked units released."""

    order_id: int
    user_id: str
    side: Side
    lock_asset: str
    locked_units: int
    reason: str


EngineCommand = PlaceOrder | CancelOrder | CancelAll | Configure | RejectOrder


@dataclass(slots=True)
class OrderUpdate:
    """The state of an order after the command; one per order the command touched."""

    order_id: int
    user_id: str
    side: Side
    status: OrderStatus
    executed_lots: int
    executed_quote_units: int
    remaining_lots: int  # 0 once terminal
    reason: str | None = None  # ErrorCode / expiry reason for rejected or expired orders


@dataclass(slots=True)
class Fill:
    trade_id: int
    price_ticks: int  # always the maker's price
    quantity_lots: int
    base_units: int
    quote_units: int
    taker_side: Side
    taker_order_id: int
    taker_user_id: str
    maker_order_id: int
    maker_user_id: str
    buyer_fee_units: int  # charged in base (the buyer receives base)
    seller_fee_units: int  # charged in quote (the seller receives quote)


@dataclass(slots=True)
class BalanceDelta:
    user_id: str
    asset: str
    available: int
    locked: int


@dataclass(slots=True)
class CommandResult:
    """What one command did. Built by the named constructors below, one per outcome."""

    seq: int
    ts_ms: int
    accepted: bool  # False: rejected, nothing but the release of the API's lock happened
    reject_reason: str | None = None  # an ErrorCode value
    order: OrderUpdate | None = None  # the placed or cancelled order (the taker)
    updates: list[OrderUpdate] = field(default_factory=list)  # every order touched, incl. .order
    fills: list[Fill] = field(default_factory=list)
    balance_deltas: list[BalanceDelta] = field(default_factory=list)
    # (side, price_ticks, new total lots at that level; 0 = level gone), in change order
    depth_changes: list[tuple[Side, int, int]] = field(default_factory=list)

    @classmethod
    def refused(cls, seq: int, ts_ms: int, reason: str) -> CommandResult:
        """Rejected, touching no order and no balance (a cancel or configure refused)."""
        return cls(seq, ts_ms, False, reason)

    @classmethod
    def rejected(cls, seq: int, ts_ms: int, reason: str, order: OrderUpdate,
                 deltas: list[BalanceDelta]) -> CommandResult:
        """An order rejected: its update, and the release of what the API locked for it."""
        return cls(seq, ts_ms, False, reason, order, [order], [], deltas)

    @classmethod
    def applied(cls, seq: int, ts_ms: int) -> CommandResult:
        """Accepted, touching no order (a configure)."""
        return cls(seq, ts_ms, True)

    # The three constructors of the hot paths (a resting order, a cancel, a taker's walk)
    # fill the slots themselves: one frame per result, as many as a plain `cls(...)` call.
    @classmethod
    def rested(cls, seq: int, ts_ms: int, order: OrderUpdate, depth_change: tuple[Side, int, int]) -> CommandResult:
        """A new order rests without trading: no balance changes, one level changed."""
        r = _new(cls)
        r.seq = seq
        r.ts_ms = ts_ms
        r.accepted = True
        r.reject_reason = None
        r.order = order
        r.updates = [order]
        r.fills = []
        r.balance_deltas = []
        r.depth_changes = [depth_change]
        return r

    @classmethod
    def expired(cls, seq: int, ts_ms: int, order: OrderUpdate, deltas: list[BalanceDelta]) -> CommandResult:
        """An accepted order that ends before touching the book (FOK, no liquidity)."""
        return cls(seq, ts_ms, True, None, order, [order], [], deltas)

    @classmethod
    def cancelled(cls, seq: int, ts_ms: int, order: OrderUpdate | None, updates: list[OrderUpdate],
                  deltas: list[BalanceDelta], depth_changes: list[tuple[Side, int, int]]) -> CommandResult:
        """One order cancelled (`order` is it) or all of a user's (`order` None)."""
        r = _new(cls)
        r.seq = seq
        r.ts_ms = ts_ms
        r.accepted = True
        r.reject_reason = None
        r.order = order
        r.updates = updates
        r.fills = []
        r.balance_deltas = deltas
        r.depth_changes = depth_changes
        return r

    @classmethod
    def executed(cls, seq: int, ts_ms: int, order: OrderUpdate, updates: list[OrderUpdate], fills: list[Fill],
                 deltas: list[BalanceDelta], depth_changes: list[tuple[Side, int, int]]) -> CommandResult:
        """A taker walked the book: `updates` starts with its own `order`."""
        r = _new(cls)
        r.seq = seq
        r.ts_ms = ts_ms
        r.accepted = True
        r.reject_reason = None
        r.order = order
        r.updates = updates
        r.fills = fills
        r.balance_deltas = deltas
        r.depth_changes = depth_changes
        return r


_new = object.__new__
