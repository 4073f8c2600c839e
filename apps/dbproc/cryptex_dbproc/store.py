"""PostgreSQL writes of one dbproc batch. Every function runs inside the caller's transaction.

Invariants:
- A trade row is inserted at most once (`ON CONFLICT DO NOTHING` on its key); only the
  trades this transaction really inserted produce fills and candle deltas, so a replayed
  trade can never be counted twice, whatever the stream ids say.
- An order row only moves forward: an update is applied when its `seq` is greater than the
  stored one.
- Candles merge with the rule of `candles.merge` (open/close by trade id, sums added).
- Fills are derived in SQL from exactly the trade rows just inserted, two per trade, with
  the rule of `cryptex_common.wire.fills_for_trade` (a test compares every stored fill with
  it).
- Trades and order states travel as COPY (text format) into session temp tables
  (`ON COMMIT DELETE ROWS`), then one INSERT ... SELECT each applies the rules above. The
  COPY payload of a round is built by `prepare` (pure, run in the decode thread), so the
  event loop only ships bytes. Candle deltas are also precomputed there assuming every
  trade is new; when the database reports fewer new trades they are recomputed from
  exactly the new ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from cryptex_common.markets import MarketSpec
from cryptex_dbproc.candles import Candle, TradeTick, aggregate
from cryptex_dbproc.decode import Batch, StreamId

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
# Session staging tables (no WAL, emptied at every commit; a rollback empties them too).
CREATE_TEMP_TABLES_SQL = f"""
CREATE TEMP TABLE IF NOT EXISTS {TMP_TRADES} (LIKE trades) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS {TMP_ORDERS} (LIKE orders) ON COMMIT DELETE ROWS;
"""

# Trades and their fills in one statement: fills are derived, two per trade, from exactly
# the trade rows this statement inserted (the SQL twin of wire.fills_for_trade: the buyer
# pays its fee in the base asset, the seller in the quote asset; the maker is the side that
# did not take). A replayed trade inserts no trade row, hence no fills.
INSERT_TRADES_SQL = f"""
WITH new AS (
    INSERT INTO trades ({", ".join(TRADE_COLUMNS)})
    SELECT {", ".join(TRADE_COLUMNS)} FROM {TMP_TRADES}
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
)
SELECT market, array_agg(trade_id) AS trade_ids FROM new GROUP BY market
"""

UPSERT_ORDERS_SQL = f"""
INSERT INTO orders AS o ({", ".join(ORDER_COLUMNS)})
SELECT {", ".join(ORDER_COLUMNS)} FROM {TMP_ORDERS}
ON CONFLICT (order_id) DO UPDATE SET
    seq = EXCLUDED.seq, status = EXCLUDED.status, reason = EXCLUDED.reason,
    executed_lots = EXCLUDED.executed_lots,
    executed_quote_units = EXCLUDED.executed_quote_units,
    updated_ms = EXCLUDED.updated_ms
WHERE o.seq < EXCLUDED.seq
"""

# The SQL twin of candles.merge.
CANDLE_UPSERT_SQL = """
INSERT INTO candles AS c (market, interval, open_time_ms, first_trade_id, open_ticks,
                          last_trade_id, close_ticks, high_ticks, low_ticks, volume_lots,
                          quote_volume_units, trade_count)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[]::numeric[],
                     $11::text[]::numeric[], $12::bigint[])
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


def _columns(
    rows: Sequence[tuple[object, ...]], width: int, numeric: Sequence[int] = ()
) -> list[list[object]]:
    """Rows -> one list per column. Columns at `numeric` positions are sent as text and
    cast to NUMERIC by the statement (exact, and about 3x cheaper to encode than asyncpg's
    binary numeric)."""
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
    for i in numeric:
        columns[i] = [None if v is None else str(v) for v in columns[i]]
    return columns


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
    by key, first wins) and order states (latest seq per order), and the candle deltas of
    every trade (valid only if the database inserts them all)."""

    batches: int = 0
    trades_copy: bytes = b""
    orders_copy: bytes = b""
    n_orders: int = 0
    ticks: dict[str, list[TradeTick]] = field(default_factory=dict)
    deltas: dict[str, dict[tuple[str, str, int], Candle]] = field(default_factory=dict)


def prepare(batches: Sequence[Batch]) -> Prepared:
    """Pure CPU, no I/O: runs in the decode thread while the previous round is written.

    Batches are decoded dicts (`decode.Batch`: alias keys, enum values as strings). Every
    text field is escaped; numbers are Python ints formatted exactly (a value PostgreSQL
    refuses, like an out-of-range integer or a NUL byte, fails the round as data: see the
    processor)."""
    lines: list[str] = []
    seen: set[tuple[str, int]] = set()
    ticks: dict[str, list[TradeTick]] = {}
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
                ts_ms, price, lots, quote = (
                    t["tsMs"], t["priceTicks"], t["quantityLots"], t["quoteUnits"])
                lines.append(
                    f"{_text(market)}\t{trade_id}\t{t['seq']}\t{ts_ms}\t{price}\t{lots}\t"
                    f"{quote}\t{t['takerSide']}\t{t['buyOrderId']}\t{t['sellOrderId']}\t"
                    f"{_text(t['buyUserId'])}\t{_text(t['sellUserId'])}\t"
                    f"{t['buyerFeeUnits']}\t{t['sellerFeeUnits']}\n"
                )
                market_ticks = ticks.get(market)
                if market_ticks is None:
                    market_ticks = ticks[market] = []
                market_ticks.append(TradeTick(trade_id, ts_ms, price, lots, quote))
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
        orders_copy="".join(order_lines).encode(),
        n_orders=len(order_lines),
        ticks=ticks,
        deltas={m: aggregate(m, market_ticks) for m, market_ticks in ticks.items()},
    )


async def create_temp_tables(conn: asyncpg.Connection) -> None:
    """Once per session, outside any transaction (a rollback would drop them)."""
    await conn.execute(CREATE_TEMP_TABLES_SQL)


async def insert_trades(
    conn: asyncpg.Connection, prepared: Prepared, specs: dict[str, MarketSpec]
) -> dict[str, set[int]]:
    """Insert the prepared trades and, for each newly inserted one, its two fills. Returns
    the ids of the new trades per market; a trade already stored is left alone."""
    if not prepared.ticks:
        return {}
    await conn.copy_to_table(  # a memoryview: asyncpg would take bytes for a file path
        TMP_TRADES, source=memoryview(prepared.trades_copy), columns=TRADE_COLUMNS,
        format="text",
    )
    markets = sorted(prepared.ticks)
    rows = await conn.fetch(
        INSERT_TRADES_SQL, markets,
        [specs[m].base_asset for m in markets], [specs[m].quote_asset for m in markets],
    )
    return {r["market"]: set(r["trade_ids"]) for r in rows}


async def upsert_orders(conn: asyncpg.Connection, prepared: Prepared) -> int:
    """Latest state per order: within the batch the highest seq wins (`prepare`), then the
    stored row is replaced only by a higher seq."""
    if not prepared.n_orders:
        return 0
    await conn.copy_to_table(  # a memoryview: asyncpg would take bytes for a file path
        TMP_ORDERS, source=memoryview(prepared.orders_copy), columns=ORDER_COLUMNS,
        format="text",
    )
    await conn.execute(UPSERT_ORDERS_SQL)
    return prepared.n_orders


def candle_deltas(prepared: Prepared, new_ids: dict[str, set[int]]) -> list[Candle]:
    """Candle deltas of exactly the new trades, every interval, sorted by key."""
    deltas: dict[tuple[str, str, int], Candle] = {}
    for market, ids in new_ids.items():
        ticks = prepared.ticks.get(market, [])
        if len(ids) == len(ticks):  # all new: the precomputed deltas are exact
            deltas.update(prepared.deltas[market])
        elif ids:
            deltas.update(aggregate(market, [t for t in ticks if t.trade_id in ids]))
    return [deltas[k] for k in sorted(deltas)]


async def upsert_candles(conn: asyncpg.Connection, candles: Sequence[Candle]) -> int:
    if not candles:
        return 0
    rows = [
        (
            c.market, c.interval, c.open_time_ms, c.first_trade_id, c.open_ticks,
            c.last_trade_id, c.close_ticks, c.high_ticks, c.low_ticks, c.volume_lots,
            c.quote_volume_units, c.trade_count,
        )
        for c in candles
    ]
    await conn.execute(CANDLE_UPSERT_SQL, *_columns(rows, 12, (9, 10)))
    return len(rows)


async def write_events(
    conn: asyncpg.Connection, prepared: Prepared, specs: dict[str, MarketSpec]
) -> WriteStats:
    """Write trades, their fills and candles, and order states (inside the caller's
    transaction; the temp tables must exist: `create_temp_tables`)."""
    stats = WriteStats()
    new_ids = await insert_trades(conn, prepared, specs)
    stats.trades = sum(map(len, new_ids.values()))
    stats.fills = 2 * stats.trades
    stats.candles = await upsert_candles(conn, candle_deltas(prepared, new_ids))
    stats.orders = await upsert_orders(conn, prepared)
    return stats
