"""PostgreSQL writes of one dbproc batch. Every function runs inside the caller's transaction.

Invariants:
- A trade row is inserted at most once (`ON CONFLICT DO NOTHING` on its key); only the
  trades this transaction really inserted produce fills and candle deltas, so a replayed
  trade can never be counted twice, whatever the stream ids say.
- An order row only moves forward: an update is applied when its `seq` is greater than the
  stored one.
- Candles are aggregated and merged in SQL, in the trades statement, with the rules of
  `cryptex_common.candles.aggregate` and `.merge` (open/close by trade id, sums added), one upsert
  per (market, interval, bucket) per round (tests recompute every candle in Python from the
  raw trades and compare).
- Fills are derived in SQL from exactly the trade rows just inserted, two per trade, with
  the rule of `cryptex_common.wire.fills_for_trade` (a test compares every stored fill with
  it).
- Trades and order states travel as COPY (text format) into session temp tables, then one
  statement each takes them out (`DELETE ... RETURNING`, so the staging tables are empty
  again when the statement ends) and applies the rules above. Not `ON COMMIT DELETE ROWS`:
  truncating two tables at every commit cost PostgreSQL ~0.6 ms per round, more than the
  rest of a small round together. Dead staging rows are reclaimed by a `TRUNCATE` every
  `TRUNCATE_STAGING_ROWS` staged rows (`truncate_staging`). The COPY payload of a round is
  built by `prepare` (pure, run in the decode thread for large rounds), so the event loop
  only ships bytes.
- A round is BEGIN, cursors, COPY + one statement for trades/fills/candles, COPY + one
  statement for orders, cursors, COMMIT: a fixed number of round trips whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from cryptex_common.intervals import CANDLE_INTERVALS_MS, MINUTE_MS, bucket_origin_ms
from cryptex_common.markets import MarketSpec
from cryptex_common.stream_ids import StreamId
from cryptex_dbproc.decode import Batch

TRADE_COLUMNS = (
    "market", "trade_id", "seq", "ts_ms", "price_ticks", "quantity_lots", "quote_units",
    "taker_side", "buy_order_id", "sell_order_id", "buy_user_id", "sell_user_id",
    "buyer_fee_units", "seller_fee_units",
)
ORDER_COLUMNS = (
    "order_id", "seq", "user_id", "market", "side", "order_type", "time_in_force",
    "post_only", "price_ticks", "quantity_lots", "quote_budget_units", "executed_lots",
    "executed_quote_units", "status", "reason", "client_order_id", "created_ms", "updated_ms",
)
TMP_TRADES = "dbproc_tmp_trades"
TMP_ORDERS = "dbproc_tmp_orders"
# Session staging tables (no WAL). Emptied by the statement that reads them; a rollback
# discards whatever a failed round staged.
CREATE_TEMP_TABLES_SQL = f"""
CREATE TEMP TABLE IF NOT EXISTS {TMP_TRADES} (LIKE trades);
CREATE TEMP TABLE IF NOT EXISTS {TMP_ORDERS} (LIKE orders);
"""
TRUNCATE_STAGING_SQL = f"TRUNCATE {TMP_TRADES}, {TMP_ORDERS}"
# Staged rows between two TRUNCATEs: DELETE leaves dead rows that nothing vacuums in a temp
# table (the staging tables would grow and every scan of them with it).
TRUNCATE_STAGING_ROWS = 20_000

# Candle buckets per interval: (name, size ms, origin ms). 1w buckets start on Monday.
_INTERVAL_ROWS = ", ".join(
    f"('{name}', {size_ms}, {bucket_origin_ms(name)})"
    for name, size_ms in CANDLE_INTERVALS_MS.items()
)

# Trades, their fills and their candles in one statement, all derived from exactly the trade
# rows this statement inserted, so a replayed trade adds no fill and is never counted twice
# in a candle.
# - Fills: the SQL twin of wire.fills_for_trade (the buyer pays its fee in the base asset,
#   the seller in the quote asset; the maker is the side that did not take), two per trade.
# - Candles: the SQL twin of cryptex_common.candles.aggregate and merge. The new trades are folded
#   into 1m buckets (open/close = price of the smallest/largest trade id), the minutes are
#   rolled up into every interval (each bucket is a union of whole minutes), and each
#   (market, interval, bucket) is upserted once per round with the merge rule.
INSERT_TRADES_SQL = f"""
WITH staged AS (
    DELETE FROM {TMP_TRADES} RETURNING {", ".join(TRADE_COLUMNS)}
), new AS (
    INSERT INTO trades ({", ".join(TRADE_COLUMNS)})
    SELECT {", ".join(TRADE_COLUMNS)} FROM staged
    ON CONFLICT DO NOTHING
    RETURNING *
), assets AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS a(market, base, quote)
), new_fills AS (
    INSERT INTO fills (market, trade_id, side, order_id, user_id, ts_ms, price_ticks,
                       quantity_lots, quote_units, fee_units, fee_asset, is_maker)
    SELECT n.market, n.trade_id, s.side,
           CASE s.side WHEN 'buy' THEN n.buy_order_id ELSE n.sell_order_id END,
           CASE s.side WHEN 'buy' THEN n.buy_user_id ELSE n.sell_user_id END,
           n.ts_ms, n.price_ticks, n.quantity_lots, n.quote_units,
           CASE s.side WHEN 'buy' THEN n.buyer_fee_units ELSE n.seller_fee_units END,
           CASE s.side WHEN 'buy' THEN a.base ELSE a.quote END,
           s.side <> n.taker_side
    FROM new n JOIN assets a USING (market) CROSS JOIN (VALUES ('buy'), ('sell')) AS s(side)
), minutes AS (
    SELECT market, ts_ms - mod(mod(ts_ms, {MINUTE_MS}) + {MINUTE_MS}, {MINUTE_MS}) AS open_ms,
           min(trade_id) AS first_id, (array_agg(price_ticks ORDER BY trade_id))[1] AS o,
           max(trade_id) AS last_id, (array_agg(price_ticks ORDER BY trade_id DESC))[1] AS c,
           max(price_ticks) AS h, min(price_ticks) AS l, sum(quantity_lots) AS v,
           sum(quote_units) AS q, count(*) AS n
    FROM new GROUP BY 1, 2
), parts AS (
    SELECT m.*, i.name,
           m.open_ms - mod(mod(m.open_ms - i.origin_ms, i.size_ms) + i.size_ms, i.size_ms)
               AS bucket_ms
    FROM minutes m CROSS JOIN (VALUES {_INTERVAL_ROWS}) AS i(name, size_ms, origin_ms)
), deltas AS (
    SELECT market, name, bucket_ms,
           min(first_id) AS first_id, (array_agg(o ORDER BY first_id))[1] AS o,
           max(last_id) AS last_id, (array_agg(c ORDER BY last_id DESC))[1] AS c,
           max(h) AS h, min(l) AS l, sum(v) AS v, sum(q) AS q, sum(n)::bigint AS n
    FROM parts GROUP BY 1, 2, 3
), new_candles AS (
    INSERT INTO candles AS c (market, interval, open_time_ms, first_trade_id, open_ticks,
                              last_trade_id, close_ticks, high_ticks, low_ticks, volume_lots,
                              quote_volume_units, trade_count)
    SELECT market, name, bucket_ms, first_id, o, last_id, c, h, l, v, q, n FROM deltas
    ORDER BY market, name, bucket_ms  -- a stable lock order
    ON CONFLICT (market, interval, open_time_ms) DO UPDATE SET
        open_ticks = CASE WHEN EXCLUDED.first_trade_id < c.first_trade_id
                          THEN EXCLUDED.open_ticks ELSE c.open_ticks END,
        first_trade_id = LEAST(c.first_trade_id, EXCLUDED.first_trade_id),
        close_ticks = CASE WHEN EXCLUDED.last_trade_id > c.last_trade_id
                           THEN EXCLUDED.close_ticks ELSE c.close_ticks END,
        last_trade_id = GREATEST(c.last_trade_id, EXCLUDED.last_trade_id),
        high_ticks = GREATEST(c.high_ticks, EXCLUDED.high_ticks),
        low_ticks = LEAST(c.low_ticks, EXCLUDED.low_ticks),
        volume_lots = c.volume_lots + EXCLUDED.volume_lots,
        quote_volume_units = c.quote_volume_units + EXCLUDED.quote_volume_units,
        trade_count = c.trade_count + EXCLUDED.trade_count
    RETURNING 1
)
SELECT (SELECT count(*) FROM new) AS trades, (SELECT count(*) FROM new_candles) AS candles
"""

UPSERT_ORDERS_SQL = f"""
WITH staged AS (
    DELETE FROM {TMP_ORDERS} RETURNING {", ".join(ORDER_COLUMNS)}
)
INSERT INTO orders AS o ({", ".join(ORDER_COLUMNS)})
SELECT {", ".join(ORDER_COLUMNS)} FROM staged
ON CONFLICT (order_id) DO UPDATE SET
    seq = EXCLUDED.seq, status = EXCLUDED.status, reason = EXCLUDED.reason,
    executed_lots = EXCLUDED.executed_lots,
    executed_quote_units = EXCLUDED.executed_quote_units,
    updated_ms = EXCLUDED.updated_ms
WHERE o.seq < EXCLUDED.seq
"""

@dataclass(frozen=True, slots=True)
class Cursor:
    last_id: StreamId
    last_seq: int


@dataclass(slots=True)
class WriteStats:
    trades: int = 0
    fills: int = 0
    orders: int = 0
    candles: int = 0


async def lock_cursors(conn: asyncpg.Connection, markets: Iterable[str]) -> dict[str, Cursor]:
    """Read (and row-lock, against a second writer) the cursors of these markets."""
    rows = await conn.fetch(
        "SELECT market, last_id_ms, last_id_seq, last_seq FROM stream_cursors"
        " WHERE market = ANY($1::text[]) FOR UPDATE",
        list(markets),
    )
    return {
        r["market"]: Cursor((r["last_id_ms"], r["last_id_seq"]), r["last_seq"]) for r in rows
    }


async def save_cursors(conn: asyncpg.Connection, cursors: dict[str, Cursor], now_ms: int) -> None:
    if not cursors:
        return
    markets = list(cursors)
    await conn.execute(
        """
        INSERT INTO stream_cursors (market, last_id_ms, last_id_seq, last_seq, updated_ms)
        SELECT m, i, s, q, $5 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
            AS u(m, i, s, q)
        ON CONFLICT (market) DO UPDATE SET last_id_ms = EXCLUDED.last_id_ms,
            last_id_seq = EXCLUDED.last_id_seq, last_seq = EXCLUDED.last_seq,
            updated_ms = EXCLUDED.updated_ms
        """,
        markets,
        [cursors[m].last_id[0] for m in markets],
        [cursors[m].last_id[1] for m in markets],
        [cursors[m].last_seq for m in markets],
        now_ms,
    )


async def save_markets(
    conn: asyncpg.Connection, specs: Iterable[MarketSpec], now_ms: int
) -> None:
    specs = list(specs)
    if not specs:
        return
    await conn.execute(
        """
        INSERT INTO markets (symbol, spec, updated_ms)
        SELECT s, j::jsonb, $3 FROM unnest($1::text[], $2::text[]) AS u(s, j)
        ON CONFLICT (symbol) DO UPDATE SET spec = EXCLUDED.spec, updated_ms = EXCLUDED.updated_ms
        WHERE markets.spec IS DISTINCT FROM EXCLUDED.spec
        """,
        [s.symbol for s in specs],
        [s.model_dump_json(by_alias=True) for s in specs],
        now_ms,
    )


# COPY text format: backslash, tab, newline and carriage return are escaped; NULL is \N.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


def _text(value: str | None) -> str:
    return _NULL if value is None else value.translate(_COPY_ESCAPES)


def _opt(value: int | None) -> str:
    return _NULL if value is None else str(value)


@dataclass(slots=True)
class Prepared:
    """The rows of a set of batches, ready to ship: COPY payloads for trades (deduplicated
    by key, first wins) and order states (latest seq per order), and the markets traded."""

    batches: int = 0
    trades_copy: bytes = b""
    n_trades: int = 0
    orders_copy: bytes = b""
    n_orders: int = 0
    markets: tuple[str, ...] = ()  # markets with trades, sorted


def prepare(batches: Sequence[Batch]) -> Prepared:
    """Pure CPU, no I/O: runs in the decode thread while the previous round is written.

    Batches are decoded dicts (`decode.Batch`: alias keys, enum values as strings). Every
    text field is escaped; numbers are Python ints formatted exactly (a value PostgreSQL
    refuses, like an out-of-range integer or a NUL byte, fails the round as data: see the
    processor). Candles are computed by the database from the trades it really inserts."""
    lines: list[str] = []
    seen: set[tuple[str, int]] = set()
    latest: dict[int, dict[str, Any]] = {}
    for batch in batches:
        for e in batch["events"]:
            if e["type"] == "trade":
                t = e["trade"]
                market, trade_id = t["market"], t["tradeId"]
                key = (market, trade_id)
                if key in seen:
                    continue
                seen.add(key)
                lines.append(
                    f"{_text(market)}\t{trade_id}\t{t['seq']}\t{t['tsMs']}\t{t['priceTicks']}\t"
                    f"{t['quantityLots']}\t{t['quoteUnits']}\t{t['takerSide']}\t"
                    f"{t['buyOrderId']}\t{t['sellOrderId']}\t"
                    f"{_text(t['buyUserId'])}\t{_text(t['sellUserId'])}\t"
                    f"{t['buyerFeeUnits']}\t{t['sellerFeeUnits']}\n"
                )
            else:
                oid = e["order"]["orderId"]
                old = latest.get(oid)
                if old is None or e["seq"] > old["seq"]:
                    latest[oid] = e
    order_lines: list[str] = []
    for oid in sorted(latest):  # a stable lock order
        e = latest[oid]
        o = e["order"]
        order_lines.append(
            f"{oid}\t{e['seq']}\t{_text(o['userId'])}\t{_text(o['market'])}\t{o['side']}\t"
            f"{o['orderType']}\t{o['timeInForce']}\t{'t' if o['postOnly'] else 'f'}\t"
            f"{_opt(o['priceTicks'])}\t{_opt(o['quantityLots'])}\t"
            f"{_opt(o['quoteBudgetUnits'])}\t{o['executedLots']}\t{o['executedQuoteUnits']}\t"
            f"{o['status']}\t{_text(o['reason'])}\t{_text(o['clientOrderId'])}\t"
            f"{o['createdMs']}\t{o['updatedMs']}\n"
        )
    return Prepared(
        batches=len(batches),
        trades_copy="".join(lines).encode(),
        n_trades=len(lines),
        orders_copy="".join(order_lines).encode(),
        n_orders=len(order_lines),
        markets=tuple(sorted({m for m, _ in seen})),
    )


async def create_temp_tables(conn: asyncpg.Connection) -> None:
    """Once per session, outside any transaction (a rollback would drop them)."""
    await conn.execute(CREATE_TEMP_TABLES_SQL)


async def insert_trades(
    conn: asyncpg.Connection, prepared: Prepared, specs: dict[str, MarketSpec]
) -> tuple[int, int]:
    """Insert the prepared trades and, for each newly inserted one, its two fills and its
    share of every interval's candle. Returns (new trades, candle rows upserted); a trade
    already stored is left alone."""
    if not prepared.n_trades:
        return 0, 0
    await conn.copy_to_table(  # a memoryview: asyncpg would take bytes for a file path
        TMP_TRADES, source=memoryview(prepared.trades_copy), columns=TRADE_COLUMNS,
        format="text",
    )
    markets = prepared.markets
    row = await conn.fetchrow(
        INSERT_TRADES_SQL, markets,
        [specs[m].base_asset for m in markets], [specs[m].quote_asset for m in markets],
    )
    assert row is not None
    return int(row["trades"]), int(row["candles"])


async def upsert_orders(conn: asyncpg.Connection, prepared: Prepared) -> int:
    """Latest state per order: within the batch the highest seq wins (`prepare`), then the
    stored row is replaced only by a higher seq."""
    if not prepared.n_orders:
        return 0
    await conn.copy_to_table(  # a memoryview: asyncpg would take bytes for a file path
        TMP_ORDERS, source=memoryview(prepared.orders_copy), columns=ORDER_COLUMNS,
        format="text",
    )
    await conn.fetch(UPSERT_ORDERS_SQL)  # fetch: a prepared statement (execute() re-plans)
    return prepared.n_orders


async def truncate_staging(conn: asyncpg.Connection) -> None:
    await conn.fetch(TRUNCATE_STAGING_SQL)


async def write_events(
    conn: asyncpg.Connection, prepared: Prepared, specs: dict[str, MarketSpec]
) -> WriteStats:
    """Write trades, their fills and candles, and order states (inside the caller's
    transaction; the temp tables must exist: `create_temp_tables`)."""
    stats = WriteStats()
    stats.trades, stats.candles = await insert_trades(conn, prepared, specs)
    stats.fills = 2 * stats.trades
    stats.orders = await upsert_orders(conn, prepared)
    return stats
