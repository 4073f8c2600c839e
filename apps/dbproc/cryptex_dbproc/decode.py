"""Stream entries of `events:{M}` -> validated EventBatch, or a dead-letter reason. No I/O.

An entry is accepted only when: it has the field `b`; `b` is an EventBatch (the shared
schema, extra fields refused); the batch's market, and every trade's and order's market, is
the stream's market; `firstSeq <= lastSeq`. Anything else is malformed and goes to the
dead-letter stream with the reason; it never stops the processor.

Stream ids are compared as `(ms, seq)` integer pairs, never as strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from cryptex_common.messages import EVENT_BATCH_ADAPTER, EventBatch, OrderEvent, TradeEvent

StreamId = tuple[int, int]
ZERO_ID: StreamId = (0, 0)
MAX_REASON_CHARS = 500


def parse_stream_id(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return (int(ms), int(seq or 0))


def format_stream_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


@dataclass(frozen=True, slots=True)
class Decoded:
    stream_id: StreamId
    batch: EventBatch
    raw: bytes


@dataclass(frozen=True, slots=True)
class Malformed:
    stream_id: StreamId
    reason: str
    raw: bytes


def decode_entry(
    market: str, stream_id: StreamId, fields: dict[bytes, bytes] | None
) -> Decoded | Malformed:
    """`fields` as redis-py returns them without decode_responses (bytes keys and values);
    None for a pending entry that was trimmed from the stream."""
    if fields is None:
        return Malformed(stream_id, "entry no longer in the stream (trimmed)", b"")
    raw = fields.get(b"b")
    if raw is None:
        keys = sorted(k.decode(errors="replace") for k in fields)
        return Malformed(stream_id, f"missing field 'b' (fields: {keys})", b"")
    try:
        batch = EVENT_BATCH_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        return Malformed(stream_id, f"invalid EventBatch: {exc}"[:MAX_REASON_CHARS], raw)
    except ValueError as exc:  # pragma: no cover - validate_json reports JSON errors above
        return Malformed(stream_id, f"invalid JSON: {exc}"[:MAX_REASON_CHARS], raw)
    if batch.market != market:
        return Malformed(stream_id, f"batch market {batch.market!r} on stream of {market!r}", raw)
    if batch.first_seq > batch.last_seq:
        return Malformed(stream_id, f"firstSeq {batch.first_seq} > lastSeq {batch.last_seq}", raw)
    for event in batch.events:
        inner = event.trade.market if isinstance(event, TradeEvent) else event.order.market
        if inner != market:
            kind = "trade" if isinstance(event, TradeEvent) else "order"
            return Malformed(stream_id, f"{kind} of market {inner!r} in batch of {market!r}", raw)
    return Decoded(stream_id, batch, raw)


def trades_of(batch: EventBatch) -> list[TradeEvent]:
    return [e for e in batch.events if isinstance(e, TradeEvent)]


def orders_of(batch: EventBatch) -> list[OrderEvent]:
    return [e for e in batch.events if isinstance(e, OrderEvent)]
