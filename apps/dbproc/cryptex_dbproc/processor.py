"""The dbproc service loop: events:{M} streams (consumer group) -> PostgreSQL.

Invariants:
- One round = the entries read from every market's stream, written in ONE transaction that
  also moves each market's stream cursor (last stream id, last seq). XACK happens only
  after COMMIT, so a crash at any point loses nothing: unacked entries stay pending and are
  read again first on restart ("0" id), and entries at or below the stored cursor are
  skipped (acked without writing). Trades are keyed, so even a skipped check could not
  duplicate a row.
- A malformed entry (bad JSON, wrong schema, wrong market, or refused by the database as
  data) goes to `deadletter:{M}` with the reason, before the commit that moves the cursor
  past it (at least once), and is acked; processing continues.
- A database or Redis that goes away: the round is retried with exponential backoff (capped
  at `dbproc_retry_max_s`), each failure logged and counted; nothing is acked meanwhile.
- SIGTERM: the round in progress finishes and commits; then the loop exits (exit code 0). If
  the database is down at that moment the round is abandoned uncommitted (still pending).
- Markets: every registered market's stream is read; `markets:changed` (and a periodic
  re-read) adds new ones. A market that disappears from the registry keeps being drained.

DbProcessor owns its collaborators and only sequences them:
- `deps` (deps.Dependencies): the PostgreSQL connection and Redis, calls retried;
- `markets` (markets.Markets): the registry, consumer groups, markets:changed;
- `reader` (reader.StreamReader): pending-first reads and the linger rule;
- `writer` (writer.RoundWriter): the round's transaction, dead letters, XACK;
- decoding and the cursor rule are pure functions of `rounds`; metrics and the round's log
  line are in `observability`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from redis.asyncio import Redis

from cryptex_dbproc.deps import (
    Dependencies,
    Stopping,
)
from cryptex_dbproc.markets import Markets
from cryptex_dbproc.migrate import migrate
from cryptex_dbproc.observability import observe_round
from cryptex_dbproc.reader import RawRound, StreamReader
from cryptex_dbproc.rounds import (
    DecodedRound,
    RoundResult,
    decode,
    decode_round,
)
from cryptex_dbproc.settings import DbprocSettings
from cryptex_dbproc.writer import RoundWriter

log = logging.getLogger(__name__)


class DbProcessor:
    def __init__(self, settings: DbprocSettings, redis: Redis, stop: asyncio.Event) -> None:
        self.settings = settings
        self.redis = redis
        self.stop = stop
        self.deps = Dependencies(settings, redis, stop)
        self.markets = Markets(self.deps)
        self.reader = StreamReader(self.deps, self.markets)
        self.writer = RoundWriter(self.deps, self.markets)

    @property
    def conn(self) -> asyncpg.Connection | None:
        """The PostgreSQL connection, if one is open (idle between rounds)."""
        return self.deps.conn

    async def ready(self) -> bool:
        return await self.deps.ready()

    async def refresh_markets(self) -> None:
        for symbol in await self.markets.load():
            self.reader.track(symbol)

    async def process(self, raw: RawRound, decoded: DecodedRound | None = None) -> RoundResult:
        """Write (with retry), then XACK. Raises Stopping if asked to stop while the
        database is unavailable (nothing acked)."""
        started = time.perf_counter()
        if decoded is None:
            decoded = decode_round(raw)
        result = await self.writer.write(decoded.items, decoded.prepared)
        await self.writer.ack(raw)
        observe_round(raw, result, started)
        return result

    async def start(self) -> None:
        applied = await self.deps.with_db("migrate", migrate)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        await self.refresh_markets()

    async def _rounds(self) -> None:
        """Read, decode and hand rounds to the writer until `stop` is set. At most one
        round is being written (a task) while the next is read and decoded; on stop the
        round being written is awaited, and cancelled only if the loop fails."""
        writing: asyncio.Task[RoundResult] | None = None
        try:
            while not self.stop.is_set():
                if self.markets.refresh_due():
                    self.markets.refresh.clear()
                    await self.refresh_markets()
                if await self.reader.linger():
                    break
                raw = await self.reader.read()
                decoded = await decode(raw) if raw else None
                if writing is not None:
                    await writing
                    writing = None
                if raw and not self.stop.is_set():
                    writing = asyncio.create_task(self.process(raw, decoded))
            if writing is not None:
                await writing
        except Stopping:
            log.info("stopping while a dependency is unavailable; pending entries kept")
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Stopping):
                    await writing

    async def run(self) -> None:
        """Process rounds until `stop` is set. Returns normally on stop.

        Two rounds overlap: while round N is written and acked (a task, mostly waiting on
        PostgreSQL), round N+1 is read and decoded (in a thread unless it is small). After a
        read that was not full, the next one waits `dbproc_linger_ms` (from the start of
        this one), so light traffic makes few rounds of many events. Writes stay strictly in
        order: round N+1's transaction starts only after round N's commit and XACK. On stop
        the round being written is finished; a round only read is left pending."""
        listener = asyncio.create_task(self.markets.listen_changed())
        try:
            await self.start()
            await self._rounds()
        except Stopping:  # from start(); _rounds() handles its own
            log.info("stopping while a dependency is unavailable; pending entries kept")
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self.reader.close()
            await self.deps.drop_db()
