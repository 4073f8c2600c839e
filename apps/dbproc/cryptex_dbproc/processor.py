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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import redis.exceptions as redis_errors
from redis.asyncio import Redis

from cryptex_common import keys, metrics
from cryptex_common.markets import MarketSpec
from cryptex_common.registry import load_markets
from cryptex_dbproc import store
from cryptex_dbproc.decode import (
    ZERO_ID,
    Batch,
    Decoded,
    Malformed,
    StreamId,
    decode_entry,
    format_stream_id,
    parse_stream_id,
)
from cryptex_dbproc.migrate import migrate
from cryptex_dbproc.observability import init_market_metrics
from cryptex_dbproc.settings import DbprocSettings

log = logging.getLogger(__name__)
SERVICE = "dbproc"
T = TypeVar("T")

# Worth a retry: the server is away, restarting, overloaded, or killed our session.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)
# The data of one entry is refused: retrying the same entry can never succeed.
DATA_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)
TRANSIENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
)

RawEntry = tuple[StreamId, dict[bytes, bytes] | None]
# A round this small (bytes of JSON) is decoded on the event loop (~0.3 ms): handing it to the
# worker thread and back cost more CPU than the decoding itself.
INLINE_DECODE_BYTES = 16_384
Item = Decoded | Malformed


@dataclass(slots=True)
class DecodedRound:
    """A round read and decoded off the event loop: the items per market and the rows of
    all its well-formed entries, prepared for COPY (used when no entry is skipped)."""

    items: dict[str, list[Item]]
    prepared: store.Prepared


class Stopping(Exception):
    """Raised out of a retry loop when the stop event is set while waiting."""


@dataclass
class RoundResult:
    stats: store.WriteStats = field(default_factory=store.WriteStats)
    dead_letters: int = 0
    skipped: int = 0


class DbProcessor:
    def __init__(self, settings: DbprocSettings, redis: Redis, stop: asyncio.Event) -> None:
        self.settings = settings
        self.redis = redis
        self.stop = stop
        self.conn: asyncpg.Connection | None = None
        self.temp_tables_conn: asyncpg.Connection | None = None  # session with temp tables
        self.staged_rows = 0  # rows staged in the temp tables since their last TRUNCATE
        self.specs: dict[str, MarketSpec] = {}
        self.stream_market: dict[str, str] = {}  # stream key -> symbol
        self.pending_from: dict[str, str] = {}  # symbol -> next id to read our pending from
        self.specs_version = 0  # bumped on every registry change
        self.specs_saved_version = -1  # the version last committed to the markets table
        self.refresh = asyncio.Event()
        self.next_refresh_s = 0.0

    # --- dependencies, with retry ----------------------------------------------------------
    async def _sleep_or_stop(self, delay_s: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay_s)
        return self.stop.is_set()

    async def _db(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self.settings.database_url, timeout=5)
        return self.conn

    async def _drop_db(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def with_db(self, what: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        delay_s, failures = 0.1, 0
        while True:
            try:
                result = await fn(await self._db())
            except TRANSIENT_DB_ERRORS as exc:
                failures += 1
                metrics.POSTGRES_ERRORS.labels(SERVICE).inc()
                log.warning(
                    "database unavailable, retrying",
                    extra={"op": what, "error": repr(exc), "attempt": failures,
                           "retry_in_s": delay_s},
                )
                await self._drop_db()
                if await self._sleep_or_stop(delay_s):
                    raise Stopping from exc
                delay_s = min(delay_s * 2, self.settings.dbproc_retry_max_s)
                continue
            if failures:
                log.info("database back", extra={"op": what, "failures": failures})
            return result

    async def with_redis(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        delay_s, failures = 0.1, 0
        while True:
            try:
                result = await fn()
            except TRANSIENT_REDIS_ERRORS as exc:
                failures += 1
                metrics.REDIS_ERRORS.labels(SERVICE).inc()
                log.warning(
                    "redis unavailable, retrying",
                    extra={"op": what, "error": repr(exc), "attempt": failures,
                           "retry_in_s": delay_s},
                )
                if await self._sleep_or_stop(delay_s):
                    raise Stopping from exc
                delay_s = min(delay_s * 2, self.settings.dbproc_retry_max_s)
                continue
            if failures:
                log.info("redis back", extra={"op": what, "failures": failures})
            return result

    async def ready(self) -> bool:
        if self.conn is None or self.conn.is_closed():
            return False
        return bool(await self.redis.ping())

    # --- markets ---------------------------------------------------------------------------
    async def _ensure_group(self, symbol: str) -> None:
        try:
            await self.redis.xgroup_create(
                keys.events_stream(symbol), keys.DBPROC_GROUP, id="0", mkstream=True
            )
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def refresh_markets(self) -> None:
        async def load() -> dict[str, MarketSpec]:
            specs = await load_markets(self.redis)
            for symbol in specs:
                await self._ensure_group(symbol)
            return specs

        specs = await self.with_redis("load markets", load)
        for symbol, spec in specs.items():
            if symbol not in self.specs:
                self.stream_market[keys.events_stream(symbol)] = symbol
                self.pending_from[symbol] = "0"  # our own pending entries first
                log.info("market added", extra={"market": symbol})
                init_market_metrics(symbol)
            if self.specs.get(symbol) != spec:
                self.specs_version += 1
            self.specs[symbol] = spec
        self.next_refresh_s = time.monotonic() + self.settings.dbproc_markets_refresh_s

    async def listen_markets_changed(self) -> None:
        """Sets `refresh` on every markets:changed message; reconnects on Redis errors."""
        while not self.stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(keys.MARKETS_CHANGED_CHANNEL)
                self.refresh.set()  # anything published while we were away
                while not self.stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self.refresh.set()
            except TRANSIENT_REDIS_ERRORS as exc:
                metrics.REDIS_ERRORS.labels(SERVICE).inc()
                log.warning("markets:changed subscription lost", extra={"error": repr(exc)})
                await self._sleep_or_stop(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- reading ---------------------------------------------------------------------------
    def _entries(self, resp: Any) -> dict[str, list[RawEntry]]:
        pairs = resp.items() if isinstance(resp, dict) else (resp or [])
        out: dict[str, list[RawEntry]] = {}
        for stream, entries in pairs:
            name = stream.decode() if isinstance(stream, bytes) else stream
            out[self.stream_market[name]] = [(parse_stream_id(i), f) for i, f in entries]
        return out

    async def read_round(self) -> dict[str, list[RawEntry]]:
        """Our pending entries first (after a restart), then new ones (blocking briefly)."""
        count = self.settings.dbproc_read_count
        consumer = self.settings.dbproc_consumer
        if self.pending_from:
            streams = {keys.events_stream(m): i for m, i in self.pending_from.items()}
            got = self._entries(await self.redis.xreadgroup(
                keys.DBPROC_GROUP, consumer, streams, count=count))
            result = {}
            for market in list(self.pending_from):
                entries = got.get(market) or []
                if entries:
                    self.pending_from[market] = format_stream_id(entries[-1][0])
                    result[market] = entries
                else:
                    del self.pending_from[market]
            if result:
                return result
        streams = {keys.events_stream(m): ">" for m in self.specs if m not in self.pending_from}
        if not streams:
            await self._sleep_or_stop(self.settings.dbproc_block_ms / 1000)
            return {}
        try:
            resp = await self.redis.xreadgroup(
                keys.DBPROC_GROUP, consumer, streams, count=count,
                block=self.settings.dbproc_block_ms,
            )
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing (stream deleted?), recreating")
            for market in self.specs:
                await self._ensure_group(market)
            return {}
        return {m: e for m, e in self._entries(resp).items() if e}

    # --- writing ---------------------------------------------------------------------------
    async def _dead_letter(self, market: str, item: Malformed) -> None:
        await self.redis.xadd(
            keys.dead_letter_stream(market),
            {
                "id": format_stream_id(item.stream_id),
                "market": market,
                "reason": item.reason,
                "b": item.raw,
            },
            maxlen=self.settings.dbproc_dead_letter_maxlen,
            approximate=True,
        )
        metrics.DBPROC_DEAD_LETTERS.labels(market).inc()
        log.warning(
            "malformed event dead-lettered",
            extra={"market": market, "streamId": format_stream_id(item.stream_id),
                   "reason": item.reason},
        )

    async def write_round(
        self, conn: asyncpg.Connection, items: dict[str, list[Item]],
        prepared: store.Prepared | None = None,
    ) -> RoundResult:
        """One transaction: rows of every entry past its market's cursor, and the cursors.
        `prepared` (the rows of every Decoded item of `items`) is used when no entry is
        skipped; otherwise the rows of the entries written are prepared here."""
        result = RoundResult()
        now_ms = int(time.time() * 1000)
        if self.temp_tables_conn is not conn:
            await store.create_temp_tables(conn)  # outside the transaction
            self.temp_tables_conn = conn
            self.staged_rows = 0
        async with conn.transaction():
            cursors = await store.lock_cursors(conn, items)
            new_cursors: dict[str, store.Cursor] = {}
            batches: list[Batch] = []
            dead: list[tuple[str, Malformed]] = []
            newest_ts_ms: dict[str, int] = {}
            for market, market_items in items.items():
                cursor = cursors.get(market, store.Cursor(ZERO_ID, 0))
                last_id, last_seq = cursor.last_id, cursor.last_seq
                for item in market_items:
                    if item.stream_id <= last_id:
                        result.skipped += 1
                        continue
                    last_id = item.stream_id
                    if isinstance(item, Malformed):
                        dead.append((market, item))
                        continue
                    batch = item.batch
                    if last_seq and batch["firstSeq"] != last_seq + 1:
                        log.warning(
                            "sequence gap on events stream",
                            extra={"market": market, "expected": last_seq + 1,
                                   "firstSeq": batch["firstSeq"]},
                        )
                    last_seq = max(last_seq, batch["lastSeq"])
                    batches.append(batch)
                    newest_ts_ms[market] = max(newest_ts_ms.get(market, 0), batch["tsMs"])
                if last_id != cursor.last_id:
                    new_cursors[market] = store.Cursor(last_id, last_seq)
            specs_version = self.specs_version
            if specs_version != self.specs_saved_version:
                await store.save_markets(conn, list(self.specs.values()), now_ms)
            if prepared is None or prepared.batches != len(batches):
                prepared = store.prepare(batches)  # entries skipped: rows of the others
            result.stats = await store.write_events(conn, prepared, self.specs)
            self.staged_rows += prepared.n_trades + prepared.n_orders
            if self.staged_rows >= store.TRUNCATE_STAGING_ROWS:
                await store.truncate_staging(conn)
                self.staged_rows = 0
            await store.save_cursors(conn, new_cursors, now_ms)
            for market, item in dead:  # before COMMIT: at least once
                await self.with_redis(
                    "dead-letter", lambda m=market, i=item: self._dead_letter(m, i)  # type: ignore[misc]
                )
            result.dead_letters = len(dead)
        self.specs_saved_version = specs_version
        now_s = time.time()
        for market, ts_ms in newest_ts_ms.items():
            metrics.DBPROC_LAG.labels(market).set(max(0.0, now_s - ts_ms / 1000))
        return result

    async def write_isolated(self, items: dict[str, list[Item]]) -> RoundResult:
        """After the database refused a round as data: each entry alone, and an entry it
        still refuses is dead-lettered with the database's reason."""
        total = RoundResult()
        for market, market_items in items.items():
            for item in market_items:
                one: dict[str, list[Item]] = {market: [item]}
                try:
                    part = await self.with_db(
                        "write entry", lambda c, o=one: self.write_round(c, o)  # type: ignore[misc]
                    )
                except DATA_DB_ERRORS as exc:
                    assert isinstance(item, Decoded)  # a Malformed item writes no rows
                    bad = Malformed(item.stream_id, f"database refused: {exc!r}", item.raw)
                    part = await self.with_db(
                        "dead-letter entry",
                        lambda c, m=market, b=bad: self.write_round(c, {m: [b]}),  # type: ignore[misc]
                    )
                total.dead_letters += part.dead_letters
                total.skipped += part.skipped
                for name in ("trades", "fills", "orders", "candles"):
                    setattr(total.stats, name,
                            getattr(total.stats, name) + getattr(part.stats, name))
        return total

    @staticmethod
    def decode_round(raw: dict[str, list[RawEntry]]) -> DecodedRound:
        """Pure CPU (JSON + schema validation, then the COPY payloads);
        run in a worker thread so it overlaps the previous round's database work."""
        items: dict[str, list[Item]] = {
            market: [decode_entry(market, sid, fields) for sid, fields in entries]
            for market, entries in raw.items()
        }
        batches = [
            item.batch for market_items in items.values() for item in market_items
            if isinstance(item, Decoded)
        ]
        return DecodedRound(items, store.prepare(batches))

    async def process(
        self, raw: dict[str, list[RawEntry]], decoded: DecodedRound | None = None
    ) -> RoundResult:
        """Write (with retry), then XACK. Raises Stopping if asked to stop while the
        database is unavailable (nothing acked)."""
        started = time.perf_counter()
        if decoded is None:
            decoded = self.decode_round(raw)
        items, prepared = decoded.items, decoded.prepared
        try:
            result = await self.with_db(
                "write round", lambda c: self.write_round(c, items, prepared))
        except DATA_DB_ERRORS as exc:
            log.warning("database refused a round; writing entries one by one",
                        extra={"error": repr(exc)})
            result = await self.write_isolated(items)

        async def ack() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for market, entries in raw.items():
                    ids = [format_stream_id(sid) for sid, _ in entries]
                    pipe.xack(keys.events_stream(market), keys.DBPROC_GROUP, *ids)
                await pipe.execute()

        await self.with_redis("xack", ack)
        for name in ("trades", "fills", "orders", "candles"):
            metrics.DBPROC_ROWS.labels(name).inc(getattr(result.stats, name))
        metrics.DBPROC_BATCH_SECONDS.observe(time.perf_counter() - started)
        # INFO, one line per round: with the engine's seq in each event, the last stream id per
        # market lets an order be followed from the engine's batch into PostgreSQL
        log.info("round written", extra={
            "trades": result.stats.trades, "orders": result.stats.orders,
            "deadLetters": result.dead_letters, "skipped": result.skipped,
            "lastIds": {m: format_stream_id(entries[-1][0]) for m, entries in raw.items() if entries}})
        return result

    # --- main loop -------------------------------------------------------------------------
    async def start(self) -> None:
        applied = await self.with_db("migrate", migrate)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        await self.refresh_markets()

    async def run(self) -> None:
        """Process rounds until `stop` is set. Returns normally on stop.

        Two rounds overlap: while round N is written and acked (a task, mostly waiting on
        PostgreSQL), round N+1 is read and decoded (in a thread unless it is small). After a
        read that was not full, the next one waits `dbproc_linger_ms` (from the start of
        this one), so light traffic makes few rounds of many events. Writes stay strictly in
        order: round N+1's transaction starts only after round N's commit and XACK. On stop
        the round being written is finished; a round only read is left pending."""
        listener = asyncio.create_task(self.listen_markets_changed())
        writing: asyncio.Task[RoundResult] | None = None
        linger_s = self.settings.dbproc_linger_ms / 1000
        next_read_s = 0.0  # monotonic time before which the next read waits (linger)
        try:
            await self.start()
            while not self.stop.is_set():
                if self.refresh.is_set() or time.monotonic() >= self.next_refresh_s:
                    self.refresh.clear()
                    await self.refresh_markets()
                wait_s = next_read_s - time.monotonic()
                if wait_s > 0 and await self._sleep_or_stop(wait_s):
                    break
                read_at_s = time.monotonic()
                raw = await self.with_redis("read", self.read_round)
                full = any(len(e) >= self.settings.dbproc_read_count for e in raw.values())
                next_read_s = read_at_s + linger_s if raw and not full else 0.0
                decoded = None
                if raw:
                    size = sum(len(f.get(b"b") or b"") for e in raw.values() for _, f in e if f)
                    if size <= INLINE_DECODE_BYTES:  # cheaper than a thread hand-off
                        decoded = self.decode_round(raw)
                    else:
                        decoded = await asyncio.to_thread(self.decode_round, raw)
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
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self._drop_db()
