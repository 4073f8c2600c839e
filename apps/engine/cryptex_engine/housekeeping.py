"""Housekeeping of one engine: its position marker, stream trimming, lag and memory gauges.

None of this is on the matching path; `tick()` runs it between batches at most once a
second (trimming every `trim_every_s`).

Invariants:
- The `engine` consumer group is only a position marker (XGROUP SETID ... ENTRIESREAD):
  nothing is read through it (docs/decisions/0011).
- Streams are trimmed with XTRIM MINID, never past what a reader still needs: commands up
  to min(stored snapshot, the engine group's position), events up to the dbproc group's
  position and never without that group; both keep `trim_margin_ms` more (decision 0008).
- Cryptex only removes stream entries from the head, so a stream is whole after an id when
  its first entry is at or before it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from cryptex_common import keys, metrics, stream_ids

if TYPE_CHECKING:
    from cryptex_engine.service import EngineService

log = logging.getLogger("cryptex.engine")


class StreamTrimmed(RuntimeError):
    """The command stream no longer holds what this state needs (no valid snapshot)."""


async def stream_gap_after(redis: Redis, stream: str, from_id: str) -> str | None:
    """Why entries after `from_id` may be missing from `stream` (trimmed), or None.
    Cryptex only ever removes entries from the head (XTRIM MINID, never XDEL), so the stream
    is whole after `from_id` when nothing was removed or its first entry is <= `from_id`.
    (Redis 7.0's max-deleted-entry-id is not moved by XTRIM, so it cannot tell.)"""
    try:
        info = await redis.xinfo_stream(stream)
    except Exception:  # no such stream: nothing was ever added or removed
        return None
    length, added = int(info.get("length") or 0), int(info.get("entries-added") or 0)
    if added <= length:
        return None
    first = info.get("first-entry")
    first_id = first[0] if first else info.get("last-generated-id") or "0-0"
    if isinstance(first_id, bytes):
        first_id = first_id.decode()
    if first is None and stream_ids.parse(first_id) <= stream_ids.parse(from_id):
        return None  # emptied up to its last entry, which this state already includes
    if first is not None and stream_ids.parse(first_id) <= stream_ids.parse(from_id):
        return None
    return f"{stream} was trimmed ({added - length} entries removed, first left {first_id}) past {from_id}"


class Housekeeping:
    """The housekeeper an EngineService owns (position marker, trimming, gauges)."""

    def __init__(self, owner: EngineService) -> None:
        self.owner = owner
        self.redis = owner.redis
        self.stream = owner.stream
        self.symbol = owner.symbol
        self.settings = owner.settings
        self.entries_read = 0  # stream entries up to the owner's last_stream_id (Redis' entries-read)
        self.group_at = ""  # the position last written to the engine group
        self._last_second = time.monotonic()
        self._last_trim = 0.0
        self._redis_memory_at = 0.0

    def due(self, now: float) -> bool:
        """Whether `tick(now)` has work to do."""
        trim_every = self.settings.trim_every_s
        return now - self._last_second >= 1.0 or bool(trim_every and now - self._last_trim >= trim_every)

    async def tick(self, now: float) -> None:
        """Once a second: move the marker, refresh the gauges; trim when due."""
        if now - self._last_second >= 1.0:
            self._last_second = now
            await self.sync_group()
            await self.update_lag()
            await self.update_redis_memory()
        trim_every = self.settings.trim_every_s
        if trim_every and now - self._last_trim >= trim_every:
            self._last_trim = now
            try:
                await self.trim_streams()
            except Exception as exc:  # trimming is housekeeping, never fatal
                log.warning("stream trim failed", extra={"market": self.symbol, "error": repr(exc)})

    async def adopt_position(self) -> None:
        """After recovery: the group exists, sits at the owner's position, and nothing an
        engine of the consumer-group era left pending stays pending (nobody reads it so)."""
        try:
            await self.redis.xgroup_create(self.stream, keys.ENGINE_GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists
            if "BUSYGROUP" not in str(exc):
                raise
        self.entries_read = await self._entries_read_at(self.owner.last_stream_id)
        await self.sync_group()
        await self._ack_pending_upto(self.owner.last_stream_id)

    async def _entries_read_at(self, last_id: str) -> int:
        """How many entries were ever added up to `last_id` (Redis' entries-read of a
        reader at that position): all ever added, minus those after it (few: recovery has
        just read up to the end)."""
        info = await self.redis.xinfo_stream(self.stream)
        added = int(info.get("entries-added") or 0)
        last_generated = info.get("last-generated-id") or "0-0"
        if stream_ids.parse(last_generated) <= stream_ids.parse(last_id):
            return added
        after = await self.redis.xrange(self.stream, min=f"({last_id}", max=last_generated)
        return added - len(after)

    async def sync_group(self) -> None:
        """Move the `engine` group to this engine's position (a marker for trimming, lag
        and the operator's drain check; nothing is read through it). A stale engine
        moving it back only delays trimming, which also waits for the stored snapshot."""
        last_id = self.owner.last_stream_id
        if last_id == self.group_at:
            return
        await self.redis.xgroup_setid(self.stream, keys.ENGINE_GROUP, last_id,
                                      entries_read=self.entries_read)
        self.group_at = last_id

    async def _ack_pending_upto(self, last_id: str) -> None:
        while True:
            pending = await self.redis.xpending_range(
                self.stream, keys.ENGINE_GROUP, min="-", max=last_id, count=1000
            )
            if not pending:
                return
            await self.redis.xack(self.stream, keys.ENGINE_GROUP,
                                  *[p["message_id"] for p in pending])

    async def acked_position(self, stream: str, group: str | None = None) -> str | None:
        """The id up to which every group on `stream` (or just `group`) has acknowledged:
        the oldest pending entry when some are pending, else the last delivered id. None
        when the group does not exist (then nothing may be trimmed)."""
        try:
            groups = await self.redis.xinfo_groups(stream)
        except Exception:
            return None
        names = [g["name"] for g in groups]
        if group is not None and group not in names:
            return None
        positions: list[str | None] = []
        for g in groups:
            if g.get("pending"):
                summary = await self.redis.xpending(stream, g["name"])
                positions.append(summary.get("min"))
            else:
                positions.append(g["last-delivered-id"])
        return stream_ids.min_id(*positions)

    def _minid_with_margin(self, minid: str) -> str:
        ms = stream_ids.parse(minid)[0]
        margin = self.settings.trim_margin_ms
        return minid if margin <= 0 else f"{max(0, ms - margin)}-0"

    async def trim_streams(self) -> dict[str, int]:
        """XTRIM MINID on both streams, never past what a reader still needs:
        MESSAGES:{M} up to min(stored snapshot's lastStreamId, every group's acknowledged
        position); events:{M} up to every group's acknowledged position, and only when the
        dbproc group exists. Both keep `trim_margin_ms` more of history."""
        removed = {"commands": 0, "events": 0}
        acked = await self.acked_position(self.stream, keys.ENGINE_GROUP)
        minid = stream_ids.min_id(self.owner.snapshots.stored_id, acked)
        if minid is not None:
            removed["commands"] = int(await self.redis.xtrim(
                self.stream, minid=self._minid_with_margin(minid), approximate=False))
        events = keys.events_stream(self.symbol)
        acked = await self.acked_position(events, keys.DBPROC_GROUP)
        if acked is not None:
            removed["events"] = int(await self.redis.xtrim(
                events, minid=self._minid_with_margin(acked), approximate=False))
        if removed["commands"] or removed["events"]:
            log.info("streams trimmed", extra={"market": self.symbol, **removed})
        return removed

    async def update_lag(self) -> None:
        """Entries not yet read (all ever added minus this engine's entries-read) and the
        age of the oldest of them."""
        info = await self.redis.xinfo_stream(self.stream)
        lag = max(0, int(info.get("entries-added") or 0) - self.entries_read)
        m = self.owner.metrics
        m.stream_lag.set(lag)
        age = 0.0
        if lag:
            nxt = await self.redis.xrange(self.stream, min=f"({self.owner.last_stream_id}", count=1)
            if nxt:
                age = max(0.0, time.time() - stream_ids.ts_ms(nxt[0][0]) / 1000)
        m.oldest_age.set(age)
        m.snapshot_age.set(time.monotonic() - self.owner.snapshots.at)

    async def update_redis_memory(self) -> None:
        """Redis used_memory / maxmemory from INFO memory, at most every 5 s. A failure is
        counted and logged, never fatal: this is a gauge refresh, not the engine's work."""
        now = time.monotonic()
        if now - self._redis_memory_at < 5.0:
            return
        self._redis_memory_at = now
        try:
            info = await self.redis.info("memory")
        except Exception as exc:
            self.owner.metrics.redis_errors.inc()
            log.warning("redis INFO memory failed", extra={"error": repr(exc)})
            return
        metrics.REDIS_USED_MEMORY.set(int(info.get("used_memory", 0)))
        metrics.REDIS_MAXMEMORY.set(int(info.get("maxmemory", 0)))

