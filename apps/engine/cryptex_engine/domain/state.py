"""The matching core's state and the pieces its parts share: constants and `EngineState`
(the slots every part of `MatchingEngine` works on).

`MatchingEngine` (matching.py) is `EngineState` + `Cancels` (cancels.py) + `Execution`
(execution.py) + placing, configuring and snapshots; the split only spreads one class's
methods over modules (each under ~400 lines): the invariants are matching.py's.
"""

from __future__ import annotations

import dataclasses

from cryptex_common.markets import MarketRules, MarketState, SelfTradePrevention
from cryptex_common.messages import OrderStatus, OrderType, Side, TimeInForce
from cryptex_engine.domain.book import Order, OrderBook
from cryptex_engine.domain.commands import OrderUpdate

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


class EngineState:
    """The state of one market's core (see matching.py for its invariants)."""

    __slots__ = (
        "_base_asset",
        "_base_units_per_lot",
        "_quote_asset",
        "_quote_units_per_tick_lot",
        "book",
        "fee_account",
        "last_trade_id",
        "maker_fee_bps",
        "rules",
        "rules_seq",
        "seq",
        "state",
        "taker_fee_bps",
    )

    def __init__(self, rules: MarketRules, fee_account: str) -> None:
        """`fee_account`: the user id fees are credited to (the exchange's, given as data)."""
        self.rules = rules
        self.fee_account = fee_account
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


    def _terminate_resting(self, order: Order, status: OrderStatus, reason: str | None) -> OrderUpdate:
        """A resting order leaves the book unfilled (STP): its lock is no longer its own
        (the caller releases `locked_remaining` before this zeroes it)."""
        order.locked_remaining = 0
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
