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

Redis Cluster (decision 0013): one XREADGROUP may only name streams of one hash slot, and
every market's stream has its own tag. The streams are therefore read in *slot groups*:
on a single Redis there is one group (every stream), so a read is exactly one XREADGROUP
as before, blocking up to `dbproc_block_ms`; on a cluster, one XREADGROUP per slot, all in
one non-blocking pipeline (one round trip per primary, in parallel). When that found
nothing new, the reader waits without consuming: each stream gets a waiter, an XREAD
BLOCK `dbproc_block_ms` from the group's last-delivered id (XINFO GROUPS), and the round
reads again (non-blocking) as soon as any waiter wakes, or returns empty when none did.
So a cluster idles at about one pipeline per `dbproc_block_ms` and sees a new entry about
one round trip later than a single Redis. Waiters consume nothing, so one still blocked
when the round goes on is kept for the next wait (its id is still the last delivered: an
entry after it would have woken it) rather than cancelled, which would cost redis-py a
reconnect each; `close` cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from cryptex_common import keys, stream_ids
from cryptex_common.stream_ids import StreamId
from cryptex_dbproc.deps import Dependencies
from cryptex_dbproc.markets import Markets

log = logging.getLogger("cryptex_dbproc.processor")  # the name log lines always carried

RawEntry = tuple[StreamId, dict[bytes, bytes] | None]
RawRound = dict[str, list[RawEntry]]  # market -> its entries, in stream order
Streams = dict[str, str]  # stream key -> the id to read after (">": new entries)


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class StreamReader:
    def __init__(self, deps: Dependencies, markets: Markets) -> None:
        self.deps = deps
        self.markets = markets
        self.pending_from: dict[str, str] = {}  # symbol -> next id to read our pending from
        self.next_read_s = 0.0  # monotonic time before which the next read waits (linger)
        self._waiters: dict[str, asyncio.Task[Any]] = {}  # stream -> XREAD BLOCK (cluster)

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

    def _slot_groups(self, streams: Streams) -> list[Streams]:
        """`streams` split so that each part keeps to one hash slot: one part on a single
        Redis, one per slot on a cluster (none when `streams` is empty)."""
        if not streams:
            return []
        if not isinstance(self.deps.redis, RedisCluster):
            return [streams]
        groups: dict[int, Streams] = {}
        for stream, after in streams.items():
            groups.setdefault(key_slot(stream.encode()), {})[stream] = after
        return list(groups.values())

    async def _xreadgroup(self, groups: list[Streams], block_ms: int | None = None) -> RawRound:
        """One XREADGROUP per slot group: a lone group by itself (blocking up to `block_ms`
        when given), several in one pipeline, never blocking."""
        settings = self.deps.settings
        redis = self.deps.redis
        if len(groups) == 1:
            replies = [await redis.xreadgroup(keys.DBPROC_GROUP, settings.dbproc_consumer, groups[0],
                                              count=settings.dbproc_read_count, block=block_ms)]
        else:
            async with redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    pipe.xreadgroup(keys.DBPROC_GROUP, settings.dbproc_consumer, group,
                                    count=settings.dbproc_read_count)
                replies = await pipe.execute()
        out: RawRound = {}
        for reply in replies:
            out.update(self._entries(reply))
        return out

    async def _wait_new(self, streams: list[str]) -> bool:
        """Until an entry newer than the group's last delivered one is on any of `streams`,
        at most `dbproc_block_ms`; True if one is. Consumes nothing (see the module doc)."""
        redis = self.deps.redis
        block_ms = self.deps.settings.dbproc_block_ms
        waiters = self._waiters
        for stream in streams:  # a waiter that ended meanwhile: woke (or timed out) for us
            task = waiters.get(stream)
            if task is not None and task.done():
                del waiters[stream]
                if task.result():  # raises a waiter's Redis error
                    return True
        new = [s for s in streams if s not in waiters]
        if new:
            async with redis.pipeline(transaction=False) as pipe:
                for stream in new:
                    pipe.xinfo_groups(stream)
                infos = await pipe.execute(raise_on_error=False)
            for stream, groups in zip(new, infos, strict=True):
                if isinstance(groups, redis_errors.ResponseError):  # the stream is gone
                    return True  # the next read meets NOGROUP and recreates it
                if isinstance(groups, Exception):
                    raise groups
                after = next((g["last-delivered-id"] for g in groups
                              if g["name"] in (keys.DBPROC_GROUP, keys.DBPROC_GROUP.encode())), None)
                if after is None:  # no group: the next read recreates it
                    return True
                task = asyncio.create_task(redis.xread({stream: after}, count=1, block=block_ms))
                task.add_done_callback(_retrieved)  # an error never seen by a wait is not logged
                waiters[stream] = task
        done, _ = await asyncio.wait([waiters[s] for s in streams], timeout=block_ms / 1000 + 1,
                                     return_when=asyncio.FIRST_COMPLETED)
        woke = False
        for stream in streams:
            task = waiters[stream]
            if task in done:
                del waiters[stream]
                woke = bool(task.result()) or woke  # raises a waiter's Redis error
        return woke

    async def close(self) -> None:
        """Cancel the waiters still blocked (cluster only; nothing is consumed by them)."""
        waiters, self._waiters = self._waiters, {}
        for task in waiters.values():
            task.cancel()
        for task in waiters.values():
            with contextlib.suppress(BaseException):
                await task

    async def _read_pending(self) -> RawRound:
        """The next entries of the markets still draining their pending list; a market
        whose pending list came back empty moves on to new entries."""
        streams = {keys.events_stream(m): i for m, i in self.pending_from.items()}
        got = await self._xreadgroup(self._slot_groups(streams))
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
        groups = self._slot_groups(streams)
        try:
            if len(groups) == 1:
                got = await self._xreadgroup(groups, block_ms=settings.dbproc_block_ms)
            else:
                got = await self._xreadgroup(groups)
                if not any(got.values()) and await self._wait_new(list(streams)):
                    got = await self._xreadgroup(groups)
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing (stream deleted?), recreating")
            for market in specs:
                await self.markets.ensure_group(market)
            return {}
        return {m: e for m, e in got.items() if e}

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
