"""The facade's reads of dbproc's tables (PostgreSQL), in Binance's orders: allOrders and
myTrades ascending by id, and the taker-buy volumes of klines (Cryptex's candles do not
keep them; they are summed from the trades of each returned bucket).

Rows are formatted by the native reader's WireFormat and record builders, so amounts are
the same strings as /api/v1's history routes.
"""

from __future__ import annotations

from typing import Any

from cryptex_api import history
from cryptex_common.markets import MarketSpec
from cryptex_common.money import INT64_MAX

_ORDERS = f"""SELECT {history._ORDER_COLUMNS} FROM orders
    WHERE user_id = $1 AND market = $2 AND order_id >= $3 AND created_ms >= $4 AND created_ms <= $5"""
_FILLS = f"""SELECT {history._FILL_COLUMNS} FROM fills
    WHERE user_id = $1 AND market = $2 AND trade_id >= $3 AND ts_ms >= $4 AND ts_ms <= $5
      AND ($6::bigint IS NULL OR order_id = $6)"""


async def all_orders(reader: history.HistoryReader, spec: MarketSpec, user_id: str, from_order_id: int | None,
                     start_ms: int | None, end_ms: int | None, limit: int) -> list[dict[str, Any]]:
    """Orders ascending by id: from `from_order_id` when given, else the newest `limit`."""
    args = (user_id, spec.symbol, from_order_id or 0, start_ms or 0, INT64_MAX if end_ms is None else end_ms, limit)
    if from_order_id is not None or start_ms is not None:
        sql = f"{_ORDERS} ORDER BY order_id LIMIT $6"
    else:
        sql = f"SELECT * FROM ({_ORDERS} ORDER BY order_id DESC LIMIT $6) newest ORDER BY order_id"
    async with reader.pool.acquire() as conn:
        rows = await conn.fetch(sql, *args)
    wire = reader.wire(spec)
    return [wire.order(history._order(r)) for r in rows]


async def my_trades(reader: history.HistoryReader, spec: MarketSpec, user_id: str, order_id: int | None,
                    from_id: int | None, start_ms: int | None, end_ms: int | None, limit: int) -> list[dict[str, Any]]:
    """The caller's fills ascending by trade id: from `from_id` when given, else the newest."""
    args = (user_id, spec.symbol, from_id or 0, start_ms or 0, INT64_MAX if end_ms is None else end_ms,
            order_id, limit)
    if from_id is not None or start_ms is not None:
        sql = f"{_FILLS} ORDER BY trade_id, side LIMIT $7"
    else:
        sql = f"SELECT * FROM ({_FILLS} ORDER BY trade_id DESC, side LIMIT $7) newest ORDER BY trade_id, side"
    async with reader.pool.acquire() as conn:
        rows = await conn.fetch(sql, *args)
    wire = reader.wire(spec)
    return [wire.fill(history._fill(r)) for r in rows]


async def taker_buy_volumes(reader: history.HistoryReader, spec: MarketSpec, open_times: list[int],
                            size_ms: int) -> dict[int, tuple[int, int]]:
    """{bucket open time: (taker-buy lots, taker-buy quote units)} over [open, open + size)."""
    if not open_times:
        return {}
    sql = """SELECT b.open_ms, COALESCE(SUM(t.quantity_lots), 0) AS lots, COALESCE(SUM(t.quote_units), 0) AS quote
             FROM unnest($2::bigint[]) AS b(open_ms)
             LEFT JOIN trades t ON t.market = $1 AND t.taker_side = 'buy'
                               AND t.ts_ms >= b.open_ms AND t.ts_ms < b.open_ms + $3
             GROUP BY b.open_ms"""
    async with reader.pool.acquire() as conn:
        rows = await conn.fetch(sql, spec.symbol, open_times, size_ms)
    return {r["open_ms"]: (int(r["lots"]), int(r["quote"])) for r in rows}
