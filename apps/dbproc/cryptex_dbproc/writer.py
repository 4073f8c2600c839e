"""Writing a decoded round to PostgreSQL: one transaction per round, then XACK.

Invariants:
- One round = one transaction holding the rows of every entry past its market's cursor
  (`rounds.plan_round`), the market specs if they changed, and the moved cursors. Entries
  at or below the cursor are skipped: a replay never writes twice.
- A malformed entry is dead-lettered (XADD `deadletter:{M}`) inside the transaction, before
  COMMIT: at least once, and never acked before it is recorded.
- XACK comes only after COMMIT: a crash at any point leaves the round pending, read again.
- When the database refuses a round as data, each entry is written alone; one it still
  refuses is dead-lettered with the database's reason, and the others are written.
- The staging temp tables live in the session: created once per connection (outside any
  transaction) and TRUNCATEd every `store.TRUNCATE_STAGING_ROWS` staged rows.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from cryptex_common import keys, metrics, stream_ids
from cryptex_dbproc import store
from cryptex_dbproc.decode import Decoded, Malformed
from cryptex_dbproc.deps import DATA_DB_ERRORS, Dependencies
from cryptex_dbproc.markets import Markets
from cryptex_dbproc.observability import TABLES, observe_lag
from cryptex_dbproc.reader import RawRound
from cryptex_dbproc.rounds import Items, RoundPlan, RoundResult, plan_round

log = logging.getLogger("cryptex_dbproc.processor")  # the name log lines always carried


class RoundWriter:
    def __init__(self, deps: Dependencies, markets: Markets) -> None:
        self.deps = deps
        self.markets = markets
        self.temp_tables_conn: asyncpg.Connection | None = None  # session with temp tables
        self.staged_rows = 0  # rows staged in the temp tables since their last TRUNCATE

    async def _dead_letter(self, market: str, item: Malformed) -> None:
        await self.deps.redis.xadd(
            keys.dead_letter_stream(market),
            {
                "id": stream_ids.text(item.stream_id),
                "market": market,
                "reason": item.reason,
                "b": item.raw,
            },
            maxlen=self.deps.settings.dbproc_dead_letter_maxlen,
            approximate=True,
        )
        metrics.DBPROC_DEAD_LETTERS.labels(market).inc()
        log.warning(
            "malformed event dead-lettered",
            extra={"market": market, "streamId": stream_ids.text(item.stream_id),
                   "reason": item.reason},
        )

    async def _ensure_temp_tables(self, conn: asyncpg.Connection) -> None:
        if self.temp_tables_conn is not conn:
            await store.create_temp_tables(conn)  # outside the transaction
            self.temp_tables_conn = conn
            self.staged_rows = 0

    async def _write_rows(
        self, conn: asyncpg.Connection, plan: RoundPlan, prepared: store.Prepared | None
    ) -> store.WriteStats:
        if prepared is None or prepared.batches != len(plan.batches):
            prepared = store.prepare(plan.batches)  # entries skipped: rows of the others
        stats = await store.write_events(conn, prepared, self.markets.specs)
        self.staged_rows += prepared.n_trades + prepared.n_orders
        if self.staged_rows >= store.TRUNCATE_STAGING_ROWS:
            await store.truncate_staging(conn)
            self.staged_rows = 0
        return stats

    async def write_round(
        self, conn: asyncpg.Connection, items: Items, prepared: store.Prepared | None = None,
    ) -> RoundResult:
        """One transaction: rows of every entry past its market's cursor, and the cursors.
        `prepared` (the rows of every Decoded item of `items`) is used when no entry is
        skipped; otherwise the rows of the entries written are prepared here."""
        result = RoundResult()
        now_ms = int(time.time() * 1000)
        await self._ensure_temp_tables(conn)
        markets = self.markets
        async with conn.transaction():
            plan = plan_round(items, await store.lock_cursors(conn, items))
            result.skipped = plan.skipped
            specs_version = markets.specs_version
            if specs_version != markets.specs_saved_version:
                await store.save_markets(conn, list(markets.specs.values()), now_ms)
            result.stats = await self._write_rows(conn, plan, prepared)
            await store.save_cursors(conn, plan.new_cursors, now_ms)
            for market, item in plan.dead:  # before COMMIT: at least once
                await self.deps.with_redis(
                    "dead-letter", lambda m=market, i=item: self._dead_letter(m, i)  # type: ignore[misc]
                )
            result.dead_letters = len(plan.dead)
        markets.specs_saved_version = specs_version
        observe_lag(plan.newest_ts_ms)
        return result

    async def _write_alone(self, market: str, item: Decoded | Malformed) -> RoundResult:
        one: Items = {market: [item]}
        try:
            return await self.deps.with_db(
                "write entry", lambda c: self.write_round(c, one))
        except DATA_DB_ERRORS as exc:
            assert isinstance(item, Decoded)  # a Malformed item writes no rows
            bad = Malformed(item.stream_id, f"database refused: {exc!r}", item.raw)
            return await self.deps.with_db(
                "dead-letter entry", lambda c: self.write_round(c, {market: [bad]}))

    async def write_isolated(self, items: Items) -> RoundResult:
        """After the database refused a round as data: each entry alone, and an entry it
        still refuses is dead-lettered with the database's reason."""
        total = RoundResult()
        for market, market_items in items.items():
            for item in market_items:
                part = await self._write_alone(market, item)
                total.dead_letters += part.dead_letters
                total.skipped += part.skipped
                for name in TABLES:
                    setattr(total.stats, name,
                            getattr(total.stats, name) + getattr(part.stats, name))
        return total

    async def write(self, items: Items, prepared: store.Prepared) -> RoundResult:
        """The round (with retry), or entry by entry if the database refuses it as data.
        Raises Stopping if asked to stop while the database is unavailable."""
        try:
            return await self.deps.with_db(
                "write round", lambda c: self.write_round(c, items, prepared))
        except DATA_DB_ERRORS as exc:
            log.warning("database refused a round; writing entries one by one",
                        extra={"error": repr(exc)})
            return await self.write_isolated(items)

    async def ack(self, raw: RawRound) -> None:
        """XACK every entry of the round (with retry); only after its COMMIT."""
        async def ack() -> None:
            async with self.deps.redis.pipeline(transaction=False) as pipe:
                for market, entries in raw.items():
                    ids = [stream_ids.text(sid) for sid, _ in entries]
                    pipe.xack(keys.events_stream(market), keys.DBPROC_GROUP, *ids)
                await pipe.execute()

        await self.deps.with_redis("xack", ack)
