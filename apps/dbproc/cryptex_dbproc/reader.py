"""Reading rounds off the `events:{M}` streams through the dbproc consumer group.

Invariants:
- A market's own pending entries (delivered to us, never acked: a previous run crashed or
  stopped mid-round) are read first, from id "0" onwards, until that market has none left;
  only then are new entries (">") read for it. So entries are always handed on in stream
  order per market.
- A read returns at most `dbproc_read_count` entries per market and only markets with
  entries; an empty dict means nothing arrived within `dbproc_block_ms`.
- A missing consumer group (the stream was deleted) is recreated and that read is empty.
- Linger: after a read that was not full (no market gave `dbproc_read_count` entries), the
  next read waits until `dbproc_linger_ms` after the start of this one, so light traffic
  makes few rounds of many events; after a full or empty read the next read is immediate.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.exceptions as redis_errors

from cryptex_common import keys, stream_ids
from cryptex_common.stream_ids import StreamId
from cryptex_dbproc.deps import Dependencies
from cryptex_dbproc.markets import Markets

log = logging.getLogger("cryptex_dbproc.processor")  # the name log lines always carried

RawEntry = tuple[StreamId, dict[bytes, bytes] | None]
RawRound = dict[str, list[RawEntry]]  # market -> its entries, in stream order


class StreamReader:
    def __init__(self, deps: Dependencies, markets: Markets) -> None:
        self.deps = deps
        self.markets = markets
        self.pending_from: dict[str, str] = {}  # symbol -> next id to read our pending from
        self.next_read_s = 0.0  # monotonic time before which the next read waits (linger)

    def track(self, symbol: str) -> None:
        """A market seen for the first time: our own pending entries first."""
        self.pending_from[symbol] = "0"

    def _entries(self, resp: Any) -> RawRound:
        pairs = resp.items() if isinstance(resp, dict) else (resp or [])
        out: RawRound = {}
        for stream, entries in pairs:
            name = stream.decode() if isinstance(stream, bytes) else stream
            out[self.markets.stream_market[name]] = [(stream_ids.parse(i), f) for i, f in entries]
        return out

    async def _read_pending(self) -> RawRound:
        """The next entries of the markets still draining their pending list; a market
        whose pending list came back empty moves on to new entries."""
        settings = self.deps.settings
        streams = {keys.events_stream(m): i for m, i in self.pending_from.items()}
        got = self._entries(await self.deps.redis.xreadgroup(
            keys.DBPROC_GROUP, settings.dbproc_consumer, streams, count=settings.dbproc_read_count))
        result: RawRound = {}
        for market in list(self.pending_from):
            entries = got.get(market) or []
            if entries:
                self.pending_from[market] = stream_ids.text(entries[-1][0])
                result[market] = entries
            else:
                del self.pending_from[market]
        return result

    async def read_round(self) -> RawRound:
        """Our pending entries first (after a restart), then new ones (blocking briefly)."""
        if self.pending_from:
            result = await self._read_pending()
            if result:
                return result
        settings = self.deps.settings
        specs = self.markets.specs
        streams = {keys.events_stream(m): ">" for m in specs if m not in self.pending_from}
        if not streams:
            await self.deps.sleep_or_stop(settings.dbproc_block_ms / 1000)
            return {}
        try:
            resp = await self.deps.redis.xreadgroup(
                keys.DBPROC_GROUP, settings.dbproc_consumer, streams,
                count=settings.dbproc_read_count, block=settings.dbproc_block_ms,
            )
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing (stream deleted?), recreating")
            for market in specs:
                await self.markets.ensure_group(market)
            return {}
        return {m: e for m, e in self._entries(resp).items() if e}

    async def linger(self) -> bool:
        """Wait out the linger of the previous read; True if asked to stop meanwhile."""
        wait_s = self.next_read_s - time.monotonic()
        return wait_s > 0 and await self.deps.sleep_or_stop(wait_s)

    async def read(self) -> RawRound:
        """One round (with retry), and the linger rule for the read after it."""
        read_at_s = time.monotonic()
        raw = await self.deps.with_redis("read", self.read_round)
        full = any(len(e) >= self.deps.settings.dbproc_read_count for e in raw.values())
        linger_s = self.deps.settings.dbproc_linger_ms / 1000
        self.next_read_s = read_at_s + linger_s if raw and not full else 0.0
        return raw
