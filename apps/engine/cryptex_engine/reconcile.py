"""The reconciler: finishes what a crash between two steps of the sharded ledger left
(docs/decisions/0013-redis-cluster-sharded-ledger.md).

- An order locked by R1 sits in its bucket's outbox until the bucket call settling its
  place command deletes the entry (the hand-over copies the entry's id onto the command).
  One whose hand-over did not happen (the API died or Redis failed in between), or whose
  command is not settled yet, is still there: `relay_outbox` hands over every outbox entry
  older than OUTBOX_MIN_AGE_MS (handover.lua adds it to its market at most once, so an
  order the API did hand over is not queued twice) and then deletes it from the outbox.
- A batch recorded by step A whose bucket calls did not all run sits in its market's
  journal: `apply_journal` runs every journaled bucket call in entry order (each applies
  once per (market, batch)) and then deletes the entry.

Both are idempotent and safe to run concurrently with the engines and with each other:
every step they repeat is one an engine may also run, and each refuses to apply twice.
`python -m cryptex_engine reconcile` runs one pass over every bucket and market; every
engine runs the outbox relay under RECONCILER_LEASE (one at a time) and applies its own
market's journal on recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common.ledger import Ledger, outbox_handover_call
from cryptex_common.resp import as_text
from cryptex_common.settle_calls import unpack_call

log = logging.getLogger("cryptex.reconcile")

OUTBOX_MIN_AGE_MS = 2_000  # the API hands an order over within its request; older = stuck
RELAY_PAGE = 500
RELAY_INTERVAL_S = 1.0
LEASE_MS = 10_000


@dataclass(slots=True)
class Pass:
    """What one reconciler pass did: outbox entries handed over (queued now), found
    already handed over (only deleted), journal entries applied, and its run time."""

    handed_over: int = 0
    already_handed: int = 0
    journal_entries: int = 0
    seconds: float = 0.0


async def apply_journal(redis: Redis, ledger: Ledger, symbol: str) -> int:
    """Apply every journaled batch of `symbol` (see `apply_journal_key`)."""
    return await apply_journal_key(redis, ledger, keys.journal_stream(symbol))


async def apply_journal_key(redis: Redis, ledger: Ledger, journal: str) -> int:
    """Apply every batch of `journal` in every bucket it names, oldest first, and delete
    each entry once applied everywhere. Returns how many entries there were."""
    done = 0
    while True:
        entries = await redis.xrange(journal, count=RELAY_PAGE)
        if not entries:
            return done
        for entry_id, fields in entries:
            for blob in fields.values():
                await ledger.apply_bucket(unpack_call(blob))
            await redis.xdel(journal, entry_id)
            done += 1


async def relay_outbox(redis: Redis, ledger: Ledger, tag: str, now_ms: int, result: Pass) -> None:
    """Hand over the bucket's outbox entries older than OUTBOX_MIN_AGE_MS, then delete them."""
    outbox = keys.outbox_stream(tag)
    newest = f"{max(0, now_ms - OUTBOX_MIN_AGE_MS)}-0"
    while True:
        entries = await redis.xrange(outbox, "-", newest, count=RELAY_PAGE)
        if not entries:
            return
        for entry_id, raw in entries:
            fields = {as_text(name): value for name, value in raw.items()}
            status, _stream_id = await ledger.hand_over(outbox_handover_call(as_text(entry_id), fields))
            if status == "ok":
                result.handed_over += 1
                log.warning("handed over an order its API had not", extra={"orderId": as_text(fields["id"])})
            else:
                result.already_handed += 1
        await redis.xdel(outbox, *(entry_id for entry_id, _ in entries))


async def reconcile_once(redis: Redis, ledger: Ledger, symbols: list[str] | None = None) -> Pass:
    """One pass: every bucket's outbox, then the journal of every market in `symbols`
    (None: every journal in Redis)."""
    started = time.perf_counter()
    result = Pass()
    now_ms = int(time.time() * 1000)
    for tag in keys.ledger_tags():
        await relay_outbox(redis, ledger, tag, now_ms, result)
    if symbols is None:
        journals = [as_text(k) async for k in redis.scan_iter(match=keys.journal_pattern(), count=1000)]
    else:
        journals = [keys.journal_stream(s) for s in symbols]
    for journal in journals:
        result.journal_entries += await apply_journal_key(redis, ledger, journal)
    result.seconds = time.perf_counter() - started
    return result


async def relay_loop(redis: Redis, ledger: Ledger, owner: str, stop: asyncio.Event) -> None:
    """Every RELAY_INTERVAL_S, relay the outboxes when this process holds (or takes) the
    reconciler lease; errors are logged and retried next time."""
    while not stop.is_set():
        try:
            if await _hold_lease(redis, owner):
                result = Pass()
                now_ms = int(time.time() * 1000)
                for tag in keys.ledger_tags():
                    await relay_outbox(redis, ledger, tag, now_ms, result)
        except Exception as exc:  # Redis away or failing over: try again next round
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a client turned the cancel into an error
                raise asyncio.CancelledError from exc
            log.warning("outbox relay failed", extra={"error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RELAY_INTERVAL_S)


async def _hold_lease(redis: Redis, owner: str) -> bool:
    if await redis.set(keys.RECONCILER_LEASE, owner, nx=True, px=LEASE_MS):
        return True
    holder = await redis.get(keys.RECONCILER_LEASE)
    if holder is not None and as_text(holder) == owner:
        await redis.pexpire(keys.RECONCILER_LEASE, LEASE_MS)
        return True
    return False
