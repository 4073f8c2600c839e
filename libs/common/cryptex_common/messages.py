"""Message schemas shared by every service: defined once, here.

Internal messages (commands on `MESSAGES:{M}`, replies on `reply:<api>`, batches on
`events:{M}`) carry integers: prices in ticks, quantities in lots, amounts in smallest
units. Public messages (pub/sub channels read by wsgateway, REST bodies) carry decimal
strings; `cryptex_common.wire` converts.

A command's stream entry has the fields `c` (the command JSON below) and, for a new order,
`id` (the order id assigned by the enqueue script) plus the lock envelope the script wrote
(user, asset, units: cryptex_common.ledger.ENTRY_*), so an engine that cannot decode `c`
can still release the lock. The command's timestamp is the stream entry id's millisecond
part, so a replay sees the same time.

Commands are versioned: `v` in the command JSON, absent = 1. A writer uses the lowest
version that expresses its command (an order stays v1, readable by older engines); a
configure carrying market rules is v2. An engine refuses (dead-letters, and for an order
rejects and unlocks) a version above COMMAND_VERSION. See docs/decisions/0010 and 0011.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, TypeAdapter, model_serializer

from cryptex_common.markets import MarketSpec, MarketState, SelfTradePrevention


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderStatus(StrEnum):
    NEW = "new"  # accepted, funds locked, queued or resting with no fill
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # IOC/FOK/market remainder, or self-trade prevention
    REJECTED = "rejected"  # refused by the engine (post-only would take, market state)


TERMINAL_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)


class _Msg(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


# --- commands (API/operator -> engine) --------------------------------------------------
COMMAND_VERSION = 2  # the newest command format this code reads and writes


class _Command(_Msg):
    """`v`: the command format version; validation refuses one newer than COMMAND_VERSION.
    Version 1 is written by omission, so v1 commands stay byte-identical to the old format."""

    v: int = Field(default=1, ge=1, le=COMMAND_VERSION)

    @model_serializer(mode="wrap")
    def _omit_v1(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        if data.get("v") == 1:
            del data["v"]
        return data


class PlaceOrderCommand(_Command):
    type: Literal["place"] = "place"
    user_id: str = Field(alias="userId")
    side: Side
    order_type: OrderType = Field(alias="orderType")
    time_in_force: TimeInForce = Field(alias="timeInForce", default=TimeInForce.GTC)
    post_only: bool = Field(alias="postOnly", default=False)
    price_ticks: int | None = Field(alias="priceTicks", default=None)
    quantity_lots: int | None = Field(alias="quantityLots", default=None)
    # Market buys: the most quote (smallest units) the order may spend.
    quote_budget_units: int | None = Field(alias="quoteBudgetUnits", default=None)
    stp: SelfTradePrevention | None = None
    client_order_id: str | None = Field(alias="clientOrderId", default=None)
    locked_units: int = Field(alias="lockedUnits")  # what the enqueue script locked
    reply_to: str | None = Field(alias="replyTo", default=None)
    request_id: str | None = Field(alias="requestId", default=None)
    correlation_id: str | None = Field(alias="correlationId", default=None)


class CancelOrderCommand(_Command):
    type: Literal["cancel"] = "cancel"
    user_id: str = Field(alias="userId")
    order_id: int = Field(alias="orderId")
    reply_to: str | None = Field(alias="replyTo", default=None)
    request_id: str | None = Field(alias="requestId", default=None)
    correlation_id: str | None = Field(alias="correlationId", default=None)


class CancelAllCommand(_Command):
    type: Literal["cancel_all"] = "cancel_all"
    user_id: str = Field(alias="userId")
    reply_to: str | None = Field(alias="replyTo", default=None)
    request_id: str | None = Field(alias="requestId", default=None)
    correlation_id: str | None = Field(alias="correlationId", default=None)


class ConfigureMarketCommand(_Command):
    """Every mutable market rule, sequenced with the orders (written by
    registry.register_market whenever one changes). The rule fields are integers in the
    engine's units (lots, quote smallest units). A v1 configure (written before the rules
    travelled here) has none of them: it changes state and fees and keeps the rules in force.
    """

    type: Literal["configure"] = "configure"
    state: MarketState
    maker_fee_bps: int = Field(alias="makerFeeBps", ge=0)
    taker_fee_bps: int = Field(alias="takerFeeBps", ge=0)
    min_quantity_lots: int | None = Field(alias="minQuantityLots", default=None, ge=1)
    max_quantity_lots: int | None = Field(alias="maxQuantityLots", default=None, ge=1)
    min_notional_units: int | None = Field(alias="minNotionalUnits", default=None, ge=0)
    self_trade_prevention: SelfTradePrevention | None = Field(alias="selfTradePrevention", default=None)

    @classmethod
    def for_spec(cls, spec: MarketSpec) -> ConfigureMarketCommand:
        """The v2 configure that puts `spec`'s state, fees and rules in force."""
        rules = spec.rules()
        return cls(v=2, state=spec.state, makerFeeBps=spec.maker_fee_bps, takerFeeBps=spec.taker_fee_bps,
                   minQuantityLots=rules.min_quantity_lots, maxQuantityLots=rules.max_quantity_lots,
                   minNotionalUnits=rules.min_notional_units, selfTradePrevention=spec.self_trade_prevention)


Command = Annotated[
    PlaceOrderCommand | CancelOrderCommand | CancelAllCommand | ConfigureMarketCommand,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


# --- order and fill records (engine -> API, dbproc, Redis order hashes) ------------------
class OrderRecord(_Msg):
    order_id: int = Field(alias="orderId")
    user_id: str = Field(alias="userId")
    market: str
    side: Side
    order_type: OrderType = Field(alias="orderType")
    time_in_force: TimeInForce = Field(alias="timeInForce")
    post_only: bool = Field(alias="postOnly", default=False)
    price_ticks: int | None = Field(alias="priceTicks", default=None)
    quantity_lots: int | None = Field(alias="quantityLots", default=None)
    quote_budget_units: int | None = Field(alias="quoteBudgetUnits", default=None)
    executed_lots: int = Field(alias="executedLots", default=0)
    executed_quote_units: int = Field(alias="executedQuoteUnits", default=0)
    status: OrderStatus
    reason: str | None = None
    client_order_id: str | None = Field(alias="clientOrderId", default=None)
    created_ms: int = Field(alias="createdMs")
    updated_ms: int = Field(alias="updatedMs")


# `order_record` builds an OrderRecord's stored form without pydantic (the API's enqueue and
# the engine's settle run it per order): the same fields, names and order as the model's
# `model_dump(by_alias=True, mode="json")`; tests/engine/test_translate_contract.py and the
# API's validation tests hold it to the model.
ORDER_RECORD_PLACED = ("orderId", "createdMs", "updatedMs")  # known only once it is queued


def order_record(
    *, order_id: int, user_id: str, market: str, side: str, order_type: str, time_in_force: str, post_only: bool,
    price_ticks: int | None, quantity_lots: int | None, quote_budget_units: int | None, executed_lots: int,
    executed_quote_units: int, status: str, reason: str | None, client_order_id: str | None, created_ms: int,
    updated_ms: int,
) -> dict[str, Any]:
    return {
        "orderId": order_id, "userId": user_id, "market": market, "side": side, "orderType": order_type,
        "timeInForce": time_in_force, "postOnly": post_only, "priceTicks": price_ticks,
        "quantityLots": quantity_lots, "quoteBudgetUnits": quote_budget_units, "executedLots": executed_lots,
        "executedQuoteUnits": executed_quote_units, "status": status, "reason": reason,
        "clientOrderId": client_order_id, "createdMs": created_ms, "updatedMs": updated_ms,
    }


class FillRecord(_Msg):
    """One side of a trade, as its owner sees it."""

    trade_id: int = Field(alias="tradeId")
    order_id: int = Field(alias="orderId")
    user_id: str = Field(alias="userId")
    market: str
    side: Side
    price_ticks: int = Field(alias="priceTicks")
    quantity_lots: int = Field(alias="quantityLots")
    quote_units: int = Field(alias="quoteUnits")
    fee_units: int = Field(alias="feeUnits")
    fee_asset: str = Field(alias="feeAsset")
    is_maker: bool = Field(alias="isMaker")
    ts_ms: int = Field(alias="tsMs")


class TradeRecord(_Msg):
    trade_id: int = Field(alias="tradeId")
    seq: int
    market: str
    price_ticks: int = Field(alias="priceTicks")
    quantity_lots: int = Field(alias="quantityLots")
    quote_units: int = Field(alias="quoteUnits")
    taker_side: Side = Field(alias="takerSide")
    buy_order_id: int = Field(alias="buyOrderId")
    sell_order_id: int = Field(alias="sellOrderId")
    buy_user_id: str = Field(alias="buyUserId")
    sell_user_id: str = Field(alias="sellUserId")
    buyer_fee_units: int = Field(alias="buyerFeeUnits")  # in the base asset
    seller_fee_units: int = Field(alias="sellerFeeUnits")  # in the quote asset
    ts_ms: int = Field(alias="tsMs")


# --- replies (engine -> the API process that sent the command) ---------------------------
class ReplyType(StrEnum):
    ORDER_PLACED = "ORDER_PLACED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    ORDERS_CANCELLED = "ORDERS_CANCELLED"
    REJECTED = "REJECTED"


class CommandReply(_Msg):
    request_id: str = Field(alias="requestId")
    type: ReplyType
    seq: int
    order: OrderRecord | None = None
    orders: list[OrderRecord] = Field(default_factory=list)
    fills: list[FillRecord] = Field(default_factory=list)
    code: str | None = None
    message: str | None = None


REPLY_BATCH_ADAPTER: TypeAdapter[list[CommandReply]] = TypeAdapter(list[CommandReply])
"""An engine publishes one JSON array of replies per reply channel per batch."""


# --- settled batches (engine -> events:{M} -> dbproc) -------------------------------------
class TradeEvent(_Msg):
    type: Literal["trade"] = "trade"
    trade: TradeRecord


class OrderEvent(_Msg):
    type: Literal["order"] = "order"
    seq: int
    order: OrderRecord


Event = Annotated[TradeEvent | OrderEvent, Field(discriminator="type")]


class EventBatch(_Msg):
    """One settled engine batch: stream entry field `b`. Sequences are gap-free per market
    across batches (`first_seq` = previous batch's `last_seq` + 1)."""

    market: str
    first_seq: int = Field(alias="firstSeq")
    last_seq: int = Field(alias="lastSeq")
    ts_ms: int = Field(alias="tsMs")
    events: list[Event]


EVENT_BATCH_ADAPTER: TypeAdapter[EventBatch] = TypeAdapter(EventBatch)
