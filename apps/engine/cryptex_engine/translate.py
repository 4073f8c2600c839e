"""Pure translation between the wire and the matching core, for one market.

Stream entry -> core command; core results -> order records, trade records, replies and
the settled event batch. No I/O: the service feeds it and ships what it returns.

The core only knows what matching needs; the static facts of a live order (type, time in
force, client id, creation time, original quantity) are kept here in `OrderMeta`, from
its place command until it is terminal, so every OrderRecord written is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from cryptex_common import ledger
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import (
    COMMAND_ADAPTER,
    TERMINAL_STATUSES,
    CancelAllCommand,
    CancelOrderCommand,
    ConfigureMarketCommand,
    OrderStatus,
    OrderType,
    PlaceOrderCommand,
    ReplyType,
    Side,
    TimeInForce,
)
from cryptex_common.wire import fill_dicts
from cryptex_engine.domain.commands import (
    CancelAll,
    CancelOrder,
    CommandResult,
    Configure,
    EngineCommand,
    OrderUpdate,
    PlaceOrder,
    RejectOrder,
)

# The lock envelope the enqueue script writes next to `id` and `c` (names defined by the
# ledger; these fallbacks are the same names, for a ledger module that predates them).
ENTRY_USER: str = getattr(ledger, "ENTRY_USER", "u")
ENTRY_LOCK_ASSET: str = getattr(ledger, "ENTRY_LOCK_ASSET", "a")
ENTRY_LOCK_UNITS: str = getattr(ledger, "ENTRY_LOCK_UNITS", "l")
REASON_UNSUPPORTED = "UNSUPPORTED_COMMAND"  # an order whose command this engine cannot read


@dataclass(slots=True)
class OrderMeta:
    order_type: OrderType
    time_in_force: TimeInForce
    post_only: bool
    price_ticks: int | None
    quantity_lots: int | None
    quote_budget_units: int | None
    client_order_id: str | None
    created_ms: int

    def to_list(self) -> list[Any]:
        return [self.order_type.value, self.time_in_force.value, self.post_only, self.price_ticks,
                self.quantity_lots, self.quote_budget_units, self.client_order_id, self.created_ms]

    @classmethod
    def from_list(cls, row: list[Any]) -> OrderMeta:
        return cls(OrderType(row[0]), TimeInForce(row[1]), *row[2:])


@dataclass(slots=True)
class Unreadable:
    """What an undecodable order entry still tells (its envelope, and whatever of `c` is
    plain JSON of the right type): enough to close its record and answer its sender."""

    user_id: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    price_ticks: int | None
    quantity_lots: int | None
    reply_to: str | None
    request_id: str | None
    correlation_id: str | None
    type: Literal["unsupported"] = "unsupported"


Wire = PlaceOrderCommand | CancelOrderCommand | CancelAllCommand | ConfigureMarketCommand | Unreadable


@dataclass(slots=True)
class Decoded:
    """One stream entry, decoded."""

    stream_id: str
    ts_ms: int
    wire: Wire
    command: EngineCommand
    order_id: int | None = None


def stream_ts_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def decode_entry(stream_id: str, fields: dict[str, str]) -> Decoded:
    """Raises ValueError/pydantic.ValidationError for an entry that is not a command."""
    wire = COMMAND_ADAPTER.validate_json(fields["c"])
    ts_ms = stream_ts_ms(stream_id)
    if isinstance(wire, PlaceOrderCommand):
        order_id = int(fields["id"])
        cmd: EngineCommand = PlaceOrder(
            order_id=order_id,
            user_id=wire.user_id,
            side=wire.side,
            order_type=wire.order_type,
            time_in_force=wire.time_in_force,
            post_only=wire.post_only,
            price_ticks=wire.price_ticks,
            quantity_lots=wire.quantity_lots,
            quote_budget_units=wire.quote_budget_units,
            stp=wire.stp,
            locked_units=wire.locked_units,
            client_order_id=wire.client_order_id,
        )
        return Decoded(stream_id, ts_ms, wire, cmd, order_id)
    if isinstance(wire, CancelOrderCommand):
        return Decoded(stream_id, ts_ms, wire, CancelOrder(wire.order_id, wire.user_id))
    if isinstance(wire, CancelAllCommand):
        return Decoded(stream_id, ts_ms, wire, CancelAll(wire.user_id))
    return Decoded(stream_id, ts_ms, wire, Configure(
        wire.state, wire.maker_fee_bps, wire.taker_fee_bps, wire.min_quantity_lots,
        wire.max_quantity_lots, wire.min_notional_units, wire.self_trade_prevention))


def _json_object(raw: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _pick(doc: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """doc[name] if it has the right type (an int, or a str/StrEnum value), else default."""
    value = doc.get(name)
    if kind is int:
        return value if type(value) is int else default
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            return default
    return default


def reject_unreadable(stream_id: str, fields: dict[str, str], spec: MarketSpec) -> Decoded | None:
    """The rejection of an entry whose `c` cannot be decoded, when it carries an order id
    and a lock envelope (the enqueue script writes both); None otherwise (nothing was
    locked by it that the engine could know). Pure: a replay decides exactly the same."""
    try:
        order_id = int(fields["id"])
        user_id = fields[ENTRY_USER]
        asset = fields[ENTRY_LOCK_ASSET]
        units = int(fields[ENTRY_LOCK_UNITS])
    except (KeyError, ValueError, TypeError):
        return None
    if not user_id or not asset or units < 0:
        return None
    doc = _json_object(fields.get("c") or "")
    side = Side.BUY if asset == spec.quote_asset else Side.SELL  # what it locked says
    wire = Unreadable(
        user_id=user_id, side=side,
        order_type=_pick(doc, "orderType", OrderType, OrderType.LIMIT),
        time_in_force=_pick(doc, "timeInForce", TimeInForce, TimeInForce.GTC),
        price_ticks=_pick(doc, "priceTicks", int), quantity_lots=_pick(doc, "quantityLots", int),
        reply_to=_pick(doc, "replyTo", str), request_id=_pick(doc, "requestId", str),
        correlation_id=_pick(doc, "correlationId", str),
    )
    command = RejectOrder(order_id, user_id, side, asset, units, REASON_UNSUPPORTED)
    return Decoded(stream_id, stream_ts_ms(stream_id), wire, command, order_id)


def read_entry(stream_id: str, fields: dict[str, str], spec: MarketSpec) -> tuple[Decoded | None, str | None]:
    """(decoded command or None, why it could not be decoded or None). The one rule the
    engine and every replay share: an undecodable entry is an error to dead-letter; if it
    carries an order id and a lock envelope it is also a RejectOrder taking a sequence
    number, otherwise it is skipped and takes none."""
    try:
        return decode_entry(stream_id, fields), None
    except Exception as exc:
        return reject_unreadable(stream_id, fields, spec), f"{type(exc).__name__}: {exc}"


Record = dict[str, Any]  # a message model as its camelCase dict (see the module docstring)
TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)


@dataclass(slots=True)
class BatchOutput:
    """Everything one batch produces, ready to settle and publish."""

    orders: dict[int, Record] = field(default_factory=dict)  # OrderRecord: last state per order
    trades: list[Record] = field(default_factory=list)  # TradeRecord
    events: list[Record] = field(default_factory=list)  # TradeEvent | OrderEvent
    replies: list[tuple[str, Record]] = field(default_factory=list)  # (channel, CommandReply)


class Translator:
    """Builds the messages of cryptex_common.messages as plain camelCase dicts: this is the
    engine's hot path and pydantic construction would cost more than matching. A contract
    test validates every kind of dict produced here against its pydantic model."""

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.meta: dict[int, OrderMeta] = {}

    def record(self, u: OrderUpdate, ts_ms: int) -> Record:
        m = self.meta.get(u.order_id)
        if m is None:  # an order the core knows but we never saw placed: impossible by design
            raise KeyError(f"no metadata for order {u.order_id}")
        return {
            "orderId": u.order_id,
            "userId": u.user_id,
            "market": self.spec.symbol,
            "side": u.side.value,
            "orderType": m.order_type.value,
            "timeInForce": m.time_in_force.value,
            "postOnly": m.post_only,
            "priceTicks": m.price_ticks,
            "quantityLots": m.quantity_lots,
            "quoteBudgetUnits": m.quote_budget_units,
            "executedLots": u.executed_lots,
            "executedQuoteUnits": u.executed_quote_units,
            "status": u.status.value,
            "reason": u.reason,
            "clientOrderId": m.client_order_id,
            "createdMs": m.created_ms,
            "updatedMs": ts_ms,
        }

    def add(self, d: Decoded, result: CommandResult, out: BatchOutput) -> None:
        wire = d.wire
        if isinstance(wire, PlaceOrderCommand):
            assert d.order_id is not None
            self.meta[d.order_id] = OrderMeta(
                wire.order_type, wire.time_in_force, wire.post_only, wire.price_ticks,
                wire.quantity_lots, wire.quote_budget_units, wire.client_order_id, d.ts_ms,
            )
        elif isinstance(wire, Unreadable):
            assert d.order_id is not None
            self.meta[d.order_id] = OrderMeta(
                wire.order_type, wire.time_in_force, False, wire.price_ticks, wire.quantity_lots,
                None, None, d.ts_ms,
            )
        symbol = self.spec.symbol
        trades = []
        for f in result.fills:
            buy_is_taker = f.taker_side == "buy"
            trades.append({
                "tradeId": f.trade_id,
                "seq": result.seq,
                "market": symbol,
                "priceTicks": f.price_ticks,
                "quantityLots": f.quantity_lots,
                "quoteUnits": f.quote_units,
                "takerSide": f.taker_side.value,
                "buyOrderId": f.taker_order_id if buy_is_taker else f.maker_order_id,
                "sellOrderId": f.maker_order_id if buy_is_taker else f.taker_order_id,
                "buyUserId": f.taker_user_id if buy_is_taker else f.maker_user_id,
                "sellUserId": f.maker_user_id if buy_is_taker else f.taker_user_id,
                "buyerFeeUnits": f.buyer_fee_units,
                "sellerFeeUnits": f.seller_fee_units,
                "tsMs": d.ts_ms,
            })
        out.trades.extend(trades)
        out.events.extend({"type": "trade", "trade": t} for t in trades)
        records: dict[int, Record] = {}
        updates = list(result.updates)
        if result.order is not None and all(u.order_id != result.order.order_id for u in updates):
            updates.append(result.order)
        if isinstance(wire, PlaceOrderCommand) and not result.accepted and not updates:
            # a rejected place still closes the order record the API opened
            assert d.order_id is not None
            updates.append(OrderUpdate(d.order_id, wire.user_id, wire.side, OrderStatus.REJECTED,
                                       0, 0, 0, result.reject_reason))
        for u in updates:
            rec = self.record(u, d.ts_ms)
            records[u.order_id] = rec
            out.orders[u.order_id] = rec
            out.events.append({"type": "order", "seq": result.seq, "order": rec})
            if rec["status"] in TERMINAL:
                self.meta.pop(u.order_id, None)
        reply_to, request_id = getattr(wire, "reply_to", None), getattr(wire, "request_id", None)
        if reply_to and request_id:
            out.replies.append((reply_to, self._reply(d, result, records, trades, request_id)))

    def _reply(
        self,
        d: Decoded,
        result: CommandResult,
        records: dict[int, Record],
        trades: list[Record],
        request_id: str,
    ) -> Record:
        order = records.get(result.order.order_id) if result.order else None
        reply: Record = {"requestId": request_id, "seq": result.seq, "order": order}
        if not result.accepted:
            reply.update(type=ReplyType.REJECTED.value, code=result.reject_reason,
                         message=_reject_message(result.reject_reason))
        elif isinstance(d.wire, PlaceOrderCommand):
            reply.update(type=ReplyType.ORDER_PLACED.value, fills=[
                f for t in trades for f in fill_dicts(t, self.spec.base_asset, self.spec.quote_asset)
                if f["orderId"] == d.order_id
            ])
        elif isinstance(d.wire, CancelAllCommand):
            reply.update(type=ReplyType.ORDERS_CANCELLED.value, orders=list(records.values()))
        else:
            reply.update(type=ReplyType.ORDER_CANCELLED.value)
        return reply

    def batch(self, out: BatchOutput, first_seq: int, last_seq: int, ts_ms: int) -> Record:
        """An EventBatch dict."""
        return {"market": self.spec.symbol, "firstSeq": first_seq, "lastSeq": last_seq,
                "tsMs": ts_ms, "events": out.events}

    def snapshot(self) -> dict[str, list[Any]]:
        return {str(k): v.to_list() for k, v in self.meta.items()}

    def restore(self, data: dict[str, list[Any]]) -> None:
        self.meta = {int(k): OrderMeta.from_list(v) for k, v in data.items()}


_REJECT_MESSAGES = {
    "POST_ONLY_WOULD_TAKE": "postOnly order would take liquidity",
    "MARKET_HALTED": "market is halted",
    "MARKET_NOT_OPEN": "market does not accept this order in its current state",
    "ORDER_NOT_FOUND": "order not found or not open",
    "INSUFFICIENT_FUNDS": "locked funds do not cover the order",
    "QUANTITY_TOO_SMALL": "quantity is below the market's minimum in force",
    "QUANTITY_TOO_LARGE": "quantity is above the market's maximum in force",
    "NOTIONAL_TOO_SMALL": "order value is below the market's minimum in force",
    REASON_UNSUPPORTED: "the engine cannot read this command (unknown format or version); "
                        "nothing was executed and the funds were released",
}


def _reject_message(code: str | None) -> str:
    return _REJECT_MESSAGES.get(code or "", f"rejected by the engine: {code}")
