"""Pure translation of core results, for one market: order records, trade records,
replies and the settled event batch. No I/O: the service feeds it and ships what it
returns. (Decoding stream entries is `decode`, re-exported here.)

The core only knows what matching needs; the static facts of a live order (type, time in
force, client id, creation time, original quantity) are kept here in `OrderMeta`, from
its place command until it is terminal, so every OrderRecord written is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptex_common.markets import MarketSpec
from cryptex_common.messages import (
    TERMINAL_STATUSES,
    OrderStatus,
    OrderType,
    ReplyType,
    Side,
    TimeInForce,
    order_record,
)
from cryptex_engine.decode import REASON_UNSUPPORTED, Decoded
from cryptex_engine.domain.commands import CommandResult, OrderUpdate, PlaceOrder


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


Record = dict[str, Any]  # a message model as its camelCase dict (see the module docstring)
TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
# enum member -> its plain str value (one dict lookup; `.value` goes through a descriptor)
_VALUE: dict[Any, str] = {m: m.value for e in (Side, OrderType, TimeInForce, OrderStatus) for m in e}


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
        self.symbol = spec.symbol
        self.meta: dict[int, OrderMeta] = {}

    def record(self, u: OrderUpdate, ts_ms: int) -> Record:
        m = self.meta.get(u.order_id)
        if m is None:  # an order the core knows but we never saw placed: impossible by design
            raise KeyError(f"no metadata for order {u.order_id}")
        return order_record(
            order_id=u.order_id, user_id=u.user_id, market=self.symbol, side=_VALUE[u.side],
            order_type=_VALUE[m.order_type], time_in_force=_VALUE[m.time_in_force], post_only=m.post_only,
            price_ticks=m.price_ticks, quantity_lots=m.quantity_lots, quote_budget_units=m.quote_budget_units,
            executed_lots=u.executed_lots, executed_quote_units=u.executed_quote_units, status=_VALUE[u.status],
            reason=u.reason, client_order_id=m.client_order_id, created_ms=m.created_ms, updated_ms=ts_ms)

    def _remember(self, d: Decoded) -> None:
        """Keep the static facts of an order from its place command until it is terminal."""
        cmd = d.command
        if type(cmd) is PlaceOrder:
            self.meta[cmd.order_id] = OrderMeta(
                cmd.order_type, cmd.time_in_force, cmd.post_only, cmd.price_ticks,
                cmd.quantity_lots, cmd.quote_budget_units, cmd.client_order_id, d.ts_ms,
            )
        elif d.unreadable is not None:
            assert d.order_id is not None
            w = d.unreadable
            self.meta[d.order_id] = OrderMeta(
                w.order_type, w.time_in_force, False, w.price_ticks, w.quantity_lots,
                None, None, d.ts_ms,
            )

    def _trades(self, d: Decoded, result: CommandResult) -> list[Record]:
        symbol, seq, ts_ms = self.symbol, result.seq, d.ts_ms
        trades = []
        for f in result.fills:
            buy_is_taker = f.taker_side is Side.BUY
            trades.append({
                "tradeId": f.trade_id,
                "seq": seq,
                "market": symbol,
                "priceTicks": f.price_ticks,
                "quantityLots": f.quantity_lots,
                "quoteUnits": f.quote_units,
                "takerSide": _VALUE[f.taker_side],
                "buyOrderId": f.taker_order_id if buy_is_taker else f.maker_order_id,
                "sellOrderId": f.maker_order_id if buy_is_taker else f.taker_order_id,
                "buyUserId": f.taker_user_id if buy_is_taker else f.maker_user_id,
                "sellUserId": f.maker_user_id if buy_is_taker else f.taker_user_id,
                "buyerFeeUnits": f.buyer_fee_units,
                "sellerFeeUnits": f.seller_fee_units,
                "tsMs": ts_ms,
            })
        return trades

    def add(self, d: Decoded, result: CommandResult, out: BatchOutput | None) -> None:
        """Fold one command's result into `out` (records, trades, events, reply). With
        `out` None (a command settled before a restart) only the order facts are kept in
        step, which is all a replay of settled commands needs."""
        self._remember(d)
        if out is None:
            for u in result.updates or ((result.order,) if result.order else ()):
                if u.status in TERMINAL_STATUSES:
                    self.meta.pop(u.order_id, None)
            return
        trades = self._trades(d, result) if result.fills else []
        if trades:
            out.trades.extend(trades)
            out.events.extend({"type": "trade", "trade": t} for t in trades)
        records: dict[int, Record] = {}
        updates = result.updates
        if result.order is not None and all(u.order_id != result.order.order_id for u in updates):
            updates = [*updates, result.order]
        cmd = d.command
        if type(cmd) is PlaceOrder and not result.accepted and not updates:
            # a rejected place still closes the order record the API opened
            updates = [OrderUpdate(cmd.order_id, cmd.user_id, cmd.side, OrderStatus.REJECTED,
                                   0, 0, 0, result.reject_reason)]
        events, orders, seq = out.events, out.orders, result.seq
        for u in updates:
            rec = self.record(u, d.ts_ms)
            records[u.order_id] = rec
            orders[u.order_id] = rec
            events.append({"type": "order", "seq": seq, "order": rec})
            if u.status in TERMINAL_STATUSES:
                self.meta.pop(u.order_id, None)
        if d.reply_to and d.request_id:
            out.replies.append((d.reply_to, self._reply(d, result, records, trades, d.request_id)))

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
        elif d.kind == "place":
            reply.update(type=ReplyType.ORDER_PLACED.value,
                         fills=[self._taker_fill(t) for t in trades])
        elif d.kind == "cancel_all":
            reply.update(type=ReplyType.ORDERS_CANCELLED.value, orders=list(records.values()))
        else:
            reply.update(type=ReplyType.ORDER_CANCELLED.value)
        return reply

    def _taker_fill(self, t: Record) -> Record:
        """The taker's side of one of its own trades: `fill_dicts(t)`'s entry for it (every
        trade of a place command has that order as its taker)."""
        common = {"tradeId": t["tradeId"], "market": t["market"], "priceTicks": t["priceTicks"],
                  "quantityLots": t["quantityLots"], "quoteUnits": t["quoteUnits"], "tsMs": t["tsMs"]}
        if t["takerSide"] == "buy":
            return {**common, "orderId": t["buyOrderId"], "userId": t["buyUserId"], "side": "buy",
                    "feeUnits": t["buyerFeeUnits"], "feeAsset": self.spec.base_asset, "isMaker": False}
        return {**common, "orderId": t["sellOrderId"], "userId": t["sellUserId"], "side": "sell",
                "feeUnits": t["sellerFeeUnits"], "feeAsset": self.spec.quote_asset, "isMaker": False}

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
