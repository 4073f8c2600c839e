"""Pure translation between the wire and the matching core, for one market.

Stream entry -> core command; core results -> order records, trade records, replies and
the settled event batch. No I/O: the service feeds it and ships what it returns.

The core only knows what matching needs; the static facts of a live order (type, time in
force, client id, creation time, original quantity) are kept here in `OrderMeta`, from
its place command until it is terminal, so every OrderRecord written is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptex_common.markets import MarketSpec
from cryptex_common.messages import (
    COMMAND_ADAPTER,
    TERMINAL_STATUSES,
    CancelAllCommand,
    CancelOrderCommand,
    CommandReply,
    ConfigureMarketCommand,
    EventBatch,
    FillRecord,
    OrderEvent,
    OrderRecord,
    OrderStatus,
    OrderType,
    PlaceOrderCommand,
    ReplyType,
    TimeInForce,
    TradeEvent,
    TradeRecord,
)
from cryptex_common.wire import fills_for_trade
from cryptex_engine.domain.commands import (
    CancelAll,
    CancelOrder,
    CommandResult,
    Configure,
    EngineCommand,
    OrderUpdate,
    PlaceOrder,
)


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
class Decoded:
    """One stream entry, decoded."""

    stream_id: str
    ts_ms: int
    wire: PlaceOrderCommand | CancelOrderCommand | CancelAllCommand | ConfigureMarketCommand
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
    return Decoded(
        stream_id, ts_ms, wire, Configure(wire.state, wire.maker_fee_bps, wire.taker_fee_bps)
    )


@dataclass(slots=True)
class BatchOutput:
    """Everything one batch produces, ready to settle and publish."""

    orders: dict[int, OrderRecord] = field(default_factory=dict)  # last state per order
    trades: list[TradeRecord] = field(default_factory=list)
    events: list[TradeEvent | OrderEvent] = field(default_factory=list)
    replies: list[tuple[str, CommandReply]] = field(default_factory=list)  # (channel, reply)


class Translator:
    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.meta: dict[int, OrderMeta] = {}

    def record(self, u: OrderUpdate, ts_ms: int) -> OrderRecord:
        m = self.meta.get(u.order_id)
        if m is None:  # an order the core knows but we never saw placed: impossible by design
            raise KeyError(f"no metadata for order {u.order_id}")
        # model_construct: the core's output is already valid; validation would double the cost
        return OrderRecord.model_construct(
            order_id=u.order_id,
            user_id=u.user_id,
            market=self.spec.symbol,
            side=u.side,
            order_type=m.order_type,
            time_in_force=m.time_in_force,
            post_only=m.post_only,
            price_ticks=m.price_ticks,
            quantity_lots=m.quantity_lots,
            quote_budget_units=m.quote_budget_units,
            executed_lots=u.executed_lots,
            executed_quote_units=u.executed_quote_units,
            status=u.status,
            reason=u.reason,
            client_order_id=m.client_order_id,
            created_ms=m.created_ms,
            updated_ms=ts_ms,
        )

    def add(self, d: Decoded, result: CommandResult, out: BatchOutput) -> None:
        wire = d.wire
        if isinstance(wire, PlaceOrderCommand):
            assert d.order_id is not None
            self.meta[d.order_id] = OrderMeta(
                wire.order_type, wire.time_in_force, wire.post_only, wire.price_ticks,
                wire.quantity_lots, wire.quote_budget_units, wire.client_order_id, d.ts_ms,
            )
        trades = []
        for f in result.fills:
            buy_is_taker = f.taker_side == "buy"
            trades.append(TradeRecord.model_construct(
                trade_id=f.trade_id,
                seq=result.seq,
                market=self.spec.symbol,
                price_ticks=f.price_ticks,
                quantity_lots=f.quantity_lots,
                quote_units=f.quote_units,
                taker_side=f.taker_side,
                buy_order_id=f.taker_order_id if buy_is_taker else f.maker_order_id,
                sell_order_id=f.maker_order_id if buy_is_taker else f.taker_order_id,
                buy_user_id=f.taker_user_id if buy_is_taker else f.maker_user_id,
                sell_user_id=f.maker_user_id if buy_is_taker else f.taker_user_id,
                buyer_fee_units=f.buyer_fee_units,
                seller_fee_units=f.seller_fee_units,
                ts_ms=d.ts_ms,
            ))
        out.trades.extend(trades)
        out.events.extend(TradeEvent.model_construct(type="trade", trade=t) for t in trades)
        records: dict[int, OrderRecord] = {}
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
            out.events.append(OrderEvent.model_construct(type="order", seq=result.seq, order=rec))
            if rec.status in TERMINAL_STATUSES:
                self.meta.pop(u.order_id, None)
        reply_to, request_id = getattr(wire, "reply_to", None), getattr(wire, "request_id", None)
        if reply_to and request_id:
            out.replies.append((reply_to, self._reply(d, result, records, trades, request_id)))

    def _reply(
        self,
        d: Decoded,
        result: CommandResult,
        records: dict[int, OrderRecord],
        trades: list[TradeRecord],
        request_id: str,
    ) -> CommandReply:
        order = records.get(result.order.order_id) if result.order else None
        if not result.accepted:
            return CommandReply(
                requestId=request_id, type=ReplyType.REJECTED, seq=result.seq, order=order,
                code=result.reject_reason, message=_reject_message(result.reject_reason),
            )
        if isinstance(d.wire, PlaceOrderCommand):
            fills: list[FillRecord] = []
            for t in trades:
                fills.extend(
                    f for f in fills_for_trade(t, self.spec.base_asset, self.spec.quote_asset)
                    if f.order_id == d.order_id
                )
            return CommandReply(
                requestId=request_id, type=ReplyType.ORDER_PLACED, seq=result.seq, order=order,
                fills=fills,
            )
        if isinstance(d.wire, CancelAllCommand):
            return CommandReply(
                requestId=request_id, type=ReplyType.ORDERS_CANCELLED, seq=result.seq,
                orders=list(records.values()),
            )
        return CommandReply(
            requestId=request_id, type=ReplyType.ORDER_CANCELLED, seq=result.seq, order=order
        )

    def batch(self, out: BatchOutput, first_seq: int, last_seq: int, ts_ms: int) -> EventBatch:
        return EventBatch(
            market=self.spec.symbol, firstSeq=first_seq, lastSeq=last_seq, tsMs=ts_ms,
            events=out.events,
        )

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
}


def _reject_message(code: str | None) -> str:
    return _REJECT_MESSAGES.get(code or "", f"rejected by the engine: {code}")
