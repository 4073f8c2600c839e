"""A round's data, between the reader and the writer: decoding, and the cursor rule. No I/O.

Invariants:
- Decoding is pure CPU (JSON + schema validation, then the COPY payloads of every
  well-formed entry); a round larger than `INLINE_DECODE_BYTES` is decoded in a worker
  thread so it overlaps the previous round's database work.
- Cursor rule (`plan_round`): per market, an entry at or below the stored cursor's stream id
  is skipped (already committed); every other entry moves the cursor to its id, and a
  well-formed one moves `last_seq` to at least its batch's `lastSeq`. A cursor is saved only
  if it moved. A `firstSeq` that does not follow the cursor's `last_seq` is logged as a gap
  and written anyway (the stream is the authority).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from cryptex_common import stream_ids
from cryptex_dbproc import store
from cryptex_dbproc.decode import Batch, Decoded, Malformed, decode_entry
from cryptex_dbproc.reader import RawRound

log = logging.getLogger("cryptex_dbproc.processor")  # the name log lines always carried

# A round this small (bytes of JSON) is decoded on the event loop (~0.3 ms): handing it to the
# worker thread and back cost more CPU than the decoding itself.
INLINE_DECODE_BYTES = 16_384
Item = Decoded | Malformed
Items = dict[str, list[Item]]  # market -> its entries decoded, in stream order


@dataclass(slots=True)
class DecodedRound:
    """A round read and decoded off the event loop: the items per market and the rows of
    all its well-formed entries, prepared for COPY (used when no entry is skipped)."""

    items: Items
    prepared: store.Prepared


@dataclass
class RoundResult:
    stats: store.WriteStats = field(default_factory=store.WriteStats)
    dead_letters: int = 0
    skipped: int = 0


@dataclass
class RoundPlan:
    """What one transaction writes, given the stored cursors (see `plan_round`)."""

    batches: list[Batch] = field(default_factory=list)
    dead: list[tuple[str, Malformed]] = field(default_factory=list)
    new_cursors: dict[str, store.Cursor] = field(default_factory=dict)
    newest_ts_ms: dict[str, int] = field(default_factory=dict)
    skipped: int = 0


def decode_round(raw: RawRound) -> DecodedRound:
    """Pure CPU (JSON + schema validation, then the COPY payloads);
    run in a worker thread so it overlaps the previous round's database work."""
    items: Items = {
        market: [decode_entry(market, sid, fields) for sid, fields in entries]
        for market, entries in raw.items()
    }
    batches = [
        item.batch for market_items in items.values() for item in market_items
        if isinstance(item, Decoded)
    ]
    return DecodedRound(items, store.prepare(batches))


async def decode(raw: RawRound) -> DecodedRound:
    """`decode_round`, on the event loop when small, else in a worker thread."""
    size = sum(len(f.get(b"b") or b"") for e in raw.values() for _, f in e if f)
    if size <= INLINE_DECODE_BYTES:  # cheaper than a thread hand-off
        return decode_round(raw)
    return await asyncio.to_thread(decode_round, raw)


def _plan_market(plan: RoundPlan, market: str, items: list[Item], cursor: store.Cursor) -> None:
    last_id, last_seq = cursor.last_id, cursor.last_seq
    for item in items:
        if item.stream_id <= last_id:
            plan.skipped += 1
            continue
        last_id = item.stream_id
        if isinstance(item, Malformed):
            plan.dead.append((market, item))
            continue
        batch = item.batch
        if last_seq and batch["firstSeq"] != last_seq + 1:
            log.warning(
                "sequence gap on events stream",
                extra={"market": market, "expected": last_seq + 1,
                       "firstSeq": batch["firstSeq"]},
            )
        last_seq = max(last_seq, batch["lastSeq"])
        plan.batches.append(batch)
        plan.newest_ts_ms[market] = max(plan.newest_ts_ms.get(market, 0), batch["tsMs"])
    if last_id != cursor.last_id:
        plan.new_cursors[market] = store.Cursor(last_id, last_seq)


def plan_round(items: Items, cursors: dict[str, store.Cursor]) -> RoundPlan:
    """The cursor rule (module doc) applied to every market of the round, in order."""
    plan = RoundPlan()
    for market, market_items in items.items():
        _plan_market(plan, market, market_items, cursors.get(market, store.Cursor(stream_ids.ZERO_ID, 0)))
    return plan
