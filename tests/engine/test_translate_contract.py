"""The engine builds its messages as plain dicts for speed; every kind it produces must
still validate against the shared pydantic schemas in cryptex_common.messages."""

from __future__ import annotations

import orjson

from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import load_markets_yaml
from cryptex_common.messages import (
    EVENT_BATCH_ADAPTER,
    REPLY_BATCH_ADAPTER,
    CancelAllCommand,
    CancelOrderCommand,
    ConfigureMarketCommand,
    OrderRecord,
    PlaceOrderCommand,
    ReplyType,
    TradeRecord,
)
from cryptex_engine.decode import decode_entry
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.translate import BatchOutput, Translator
from tests.e2e.conftest import ROOT


def entry(n: int, cmd: object, order_id: int | None = None) -> tuple[str, dict[str, str]]:
    fields = {"c": cmd.model_dump_json(by_alias=True)}  # type: ignore[attr-defined]
    if order_id is not None:
        fields["id"] = str(order_id)
    return f"{1_700_000_000_000 + n}-0", fields


def place(user: str, side: str, price: int, qty: int, **kw: object) -> PlaceOrderCommand:
    lock = price * qty * 10 if side == "buy" else qty * 1_000_000
    return PlaceOrderCommand(userId=user, side=side, orderType="limit", priceTicks=price, quantityLots=qty,
                             lockedUnits=lock, replyTo="reply:t", requestId=f"r-{user}-{price}-{qty}", **kw)


def test_every_message_the_engine_builds_matches_the_shared_schema() -> None:
    spec = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC")
    core, translator, out = MatchingEngine(spec.rules(), FEE_ACCOUNT), Translator(spec), BatchOutput()
    entries = [
        entry(0, ConfigureMarketCommand(state="open", makerFeeBps=10, takerFeeBps=20)),
        entry(1, place("1", "sell", 10_000, 500), 1),
        entry(2, place("2", "buy", 10_100, 800), 2),
        entry(3, place("1", "sell", 10_000, 100, postOnly=True), 3),
        entry(4, CancelOrderCommand(userId="2", orderId=2, replyTo="reply:t", requestId="c1")),
        entry(5, place("1", "sell", 10_000, 100), 4),
        entry(6, CancelAllCommand(userId="1", replyTo="reply:t", requestId="c2")),
    ]
    for stream_id, fields in entries:
        decoded = decode_entry(stream_id, fields)
        translator.add(decoded, core.apply(decoded.command, decoded.ts_ms), out)

    batch = EVENT_BATCH_ADAPTER.validate_json(orjson.dumps(translator.batch(out, 1, core.seq, 1)))
    assert {e.type for e in batch.events} == {"trade", "order"}
    for rec in out.orders.values():
        OrderRecord.model_validate(rec)
    for trade in out.trades:
        TradeRecord.model_validate(trade)
    replies = REPLY_BATCH_ADAPTER.validate_json(orjson.dumps([r for _, r in out.replies]))
    kinds = {r.type for r in replies}
    assert kinds == {ReplyType.ORDER_PLACED, ReplyType.REJECTED, ReplyType.ORDER_CANCELLED,
                     ReplyType.ORDERS_CANCELLED}
    taker = next(r for r in replies if r.order and r.order.order_id == 2 and r.type == ReplyType.ORDER_PLACED)
    assert [f.quantity_lots for f in taker.fills] == [500] and taker.fills[0].is_maker is False
