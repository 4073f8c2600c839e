"""Read side of the history written by dbproc: klines, order history, fills, public trades.

Invariants:
- Every amount leaves as a decimal string formatted by `WireFormat` (prices from ticks,
  quantities from lots, quote/fees from smallest units); times and counts are integers (ms).
- Klines rows are in Binance order `[openTime, open, high, low, close, volume, closeTime,
  quoteVolume, count]`, ascending by openTime, only buckets that had trades. `startTime` and
  `endTime` bound the openTime (inclusive). Paging without gaps or repeats: ask again with
  `startTime = last openTime + 1`. Without `startTime` the newest `limit` rows up to
  `endTime` are returned (still ascending).
- Order history is newest first (by order id); page with `before_order_id`. Fills are newest
  first within `[startTime, endTime]`, or, with `fromId` (needs a market), ascending from
  that trade id. Public trades are newest first; page with `before_trade_id`.
- Query parsing is pure (no I/O) and raises CryptexError naming the query parameter:
  INVALID_FIELD for a bad value, MISSING_FIELD for a missing required one. Whether a market
  exists is the caller's check (UNKNOWN_MARKET).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.intervals import CANDLE_INTERVALS_MS
from cryptex_common.markets import MarketSpec, normalize_symbol
from cryptex_common.messages import FillRecord, OrderRecord, TradeRecord
from cryptex_common.money import INT64_MAX
from cryptex_common.wire import WireFormat

INTERVAL_MS = CANDLE_INTERVALS_MS  # names, lengths and buckets: cryptex_common.intervals
MAX_LIMIT = 1000
KLINES_DEFAULT_LIMIT = 500
HISTORY_DEFAULT_LIMIT = 100

_UINT = re.compile(r"[0-9]{1,19}")  # fullmatch only


# --- query parsing (pure) -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KlinesQuery:
    market: str
    interval: str
    start_ms: int | None
    end_ms: int | None
    limit: int


@dataclass(frozen=True, slots=True)
class OrdersHistoryQuery:
    market: str | None
    start_ms: int | None
    end_ms: int | None
    limit: int
    before_order_id: int | None


@dataclass(frozen=True, slots=True)
class FillsQuery:
    market: str | None
    start_ms: int | None
    end_ms: int | None
    limit: int
    from_trade_id: int | None


@dataclass(frozen=True, slots=True)
class TradesQuery:
    market: str
    limit: int
    before_trade_id: int | None


def _invalid(name: str, rule: str) -> CryptexError:
    return CryptexError(ErrorCode.INVALID_FIELD, f"{name} {rule}", name)


def _uint(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not _UINT.fullmatch(raw) or int(raw) > INT64_MAX:
        raise _invalid(name, "must be a non-negative integer")
    return int(raw)


def _limit(query: Mapping[str, str], default: int) -> int:
    value = _uint(query, "limit")
    if value is None:
        return default
    if not 1 <= value <= MAX_LIMIT:
        raise _invalid("limit", f"must be between 1 and {MAX_LIMIT}")
    return value


def _time_range(query: Mapping[str, str]) -> tuple[int | None, int | None]:
    start_ms, end_ms = _uint(query, "startTime"), _uint(query, "endTime")
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise _invalid("startTime", "must not be after endTime")
    return start_ms, end_ms


def _market(query: Mapping[str, str], required: bool) -> str | None:
    raw = query.get("market")
    if raw is None or not raw.strip():
        if required:
            raise CryptexError(ErrorCode.MISSING_FIELD, "market is required", "market")
        return None
    return normalize_symbol(raw)


def parse_klines_query(query: Mapping[str, str]) -> KlinesQuery:
    """`market`, `interval` (1m 5m 15m 1h 4h 1d 1w), `startTime`, `endTime` (ms), `limit`
    (1..1000, default 500)."""
    market = _market(query, required=True)
    assert market is not None
    interval = query.get("interval")
    if interval is None:
        raise CryptexError(ErrorCode.MISSING_FIELD, "interval is required", "interval")
    if interval not in INTERVAL_MS:
        raise _invalid("interval", f"must be one of {', '.join(INTERVAL_MS)}")
    start_ms, end_ms = _time_range(query)
    return KlinesQuery(market, interval, start_ms, end_ms, _limit(query, KLINES_DEFAULT_LIMIT))


def parse_orders_history_query(query: Mapping[str, str]) -> OrdersHistoryQuery:
    """Optional `market`, `startTime`, `endTime` (on the creation time), `limit`
    (default 100), `beforeOrderId`."""
    start_ms, end_ms = _time_range(query)
    return OrdersHistoryQuery(
        _market(query, required=False), start_ms, end_ms,
        _limit(query, HISTORY_DEFAULT_LIMIT), _uint(query, "beforeOrderId"),
    )


def parse_fills_query(query: Mapping[str, str]) -> FillsQuery:
    """Optional `market`, `startTime`, `endTime`, `limit` (default 100), `fromId` (a trade
    id; needs `market`, since trade ids are per market)."""
    market = _market(query, required=False)
    start_ms, end_ms = _time_range(query)
    from_trade_id = _uint(query, "fromId")
    if from_trade_id is not None and market is None:
        raise CryptexError(ErrorCode.MISSING_FIELD, "market is required with fromId", "market")
    return FillsQuery(
        market, start_ms, end_ms, _limit(query, HISTORY_DEFAULT_LIMIT), from_trade_id
    )


def parse_trades_query(query: Mapping[str, str]) -> TradesQuery:
    """`market`, `limit` (default 100), `beforeId` (older than this trade id)."""
    market = _market(query, required=True)
    assert market is not None
    return TradesQuery(market, _limit(query, HISTORY_DEFAULT_LIMIT), _uint(query, "beforeId"))


# --- reading -----------------------------------------------------------------------------
_ORDER_COLUMNS = """order_id, user_id, market, side, order_type, time_in_force, post_only,
    price_ticks, quantity_lots, quote_budget_units, executed_lots, executed_quote_units,
    status, reason, client_order_id, created_ms, updated_ms"""
_FILL_COLUMNS = """trade_id, order_id, user_id, market, side, price_ticks, quantity_lots,
    quote_units, fee_units, fee_asset, is_maker, ts_ms"""
_TRADE_COLUMNS = """trade_id, seq, market, price_ticks, quantity_lots, quote_units, taker_side,
    buy_order_id, sell_order_id, buy_user_id, sell_user_id, buyer_fee_units,
    seller_fee_units, ts_ms"""


def _ints(row: asyncpg.Record) -> dict[str, Any]:
    """Record -> dict; NUMERIC(38,0) values (Decimal) become exact ints."""
    return {k: int(v) if isinstance(v, Decimal) else v for k, v in row.items()}


def _order(row: asyncpg.Record) -> OrderRecord:
    d = _ints(row)
    return OrderRecord(
        orderId=d["order_id"], userId=d["user_id"], market=d["market"], side=d["side"],
        orderType=d["order_type"], timeInForce=d["time_in_force"], postOnly=d["post_only"],
        priceTicks=d["price_ticks"], quantityLots=d["quantity_lots"],
        quoteBudgetUnits=d["quote_budget_units"], executedLots=d["executed_lots"],
        executedQuoteUnits=d["executed_quote_units"], status=d["status"], reason=d["reason"],
        clientOrderId=d["client_order_id"], createdMs=d["created_ms"], updatedMs=d["updated_ms"],
    )


def _fill(row: asyncpg.Record) -> FillRecord:
    d = _ints(row)
    return FillRecord(
        tradeId=d["trade_id"], orderId=d["order_id"], userId=d["user_id"], market=d["market"],
        side=d["side"], priceTicks=d["price_ticks"], quantityLots=d["quantity_lots"],
        quoteUnits=d["quote_units"], feeUnits=d["fee_units"], feeAsset=d["fee_asset"],
        isMaker=d["is_maker"], tsMs=d["ts_ms"],
    )


def _trade(row: asyncpg.Record) -> TradeRecord:
    d = _ints(row)
    return TradeRecord(
        tradeId=d["trade_id"], seq=d["seq"], market=d["market"], priceTicks=d["price_ticks"],
        quantityLots=d["quantity_lots"], quoteUnits=d["quote_units"], takerSide=d["taker_side"],
        buyOrderId=d["buy_order_id"], sellOrderId=d["sell_order_id"],
        buyUserId=d["buy_user_id"], sellUserId=d["sell_user_id"],
        buyerFeeUnits=d["buyer_fee_units"], sellerFeeUnits=d["seller_fee_units"],
        tsMs=d["ts_ms"],
    )


class HistoryReader:
    """Queries over dbproc's tables through an asyncpg pool.

    `markets` is the API's live registry (symbol -> MarketSpec); a market missing from it
    (delisted) is formatted with the spec dbproc stored in its `markets` table.
    """

    def __init__(self, pool: asyncpg.Pool, markets: Mapping[str, MarketSpec] | None = None):
        self.pool = pool
        self.markets: Mapping[str, MarketSpec] = markets if markets is not None else {}
        self._wire: dict[str, WireFormat] = {}
        self._stored_specs: dict[str, MarketSpec] = {}

    def wire(self, spec: MarketSpec) -> WireFormat:
        cached = self._wire.get(spec.symbol)
        if cached is None or cached.spec != spec:
            cached = self._wire[spec.symbol] = WireFormat(spec)
        return cached

    async def _wire_for(self, conn: asyncpg.Connection, symbol: str) -> WireFormat:
        spec = self.markets.get(symbol) or self._stored_specs.get(symbol)
        if spec is None:
            raw = await conn.fetchval("SELECT spec::text FROM markets WHERE symbol = $1", symbol)
            if raw is None:
                raise CryptexError(ErrorCode.INTERNAL, f"no market spec stored for {symbol}")
            spec = self._stored_specs[symbol] = MarketSpec.model_validate_json(raw)
        return self.wire(spec)

    async def klines(
        self, spec: MarketSpec, interval: str, start_ms: int | None, end_ms: int | None,
        limit: int,
    ) -> list[list[Any]]:
        if interval not in INTERVAL_MS:
            raise _invalid("interval", f"must be one of {', '.join(INTERVAL_MS)}")
        end = INT64_MAX if end_ms is None else end_ms
        columns = """open_time_ms, open_ticks, high_ticks, low_ticks, close_ticks,
                     volume_lots, quote_volume_units, trade_count"""
        if start_ms is not None:
            sql = f"""SELECT {columns} FROM candles
                      WHERE market = $1 AND interval = $2
                        AND open_time_ms >= $3 AND open_time_ms <= $4
                      ORDER BY open_time_ms LIMIT $5"""
            args: tuple[Any, ...] = (spec.symbol, interval, start_ms, end, limit)
        else:
            sql = f"""SELECT * FROM (SELECT {columns} FROM candles
                          WHERE market = $1 AND interval = $2 AND open_time_ms <= $3
                          ORDER BY open_time_ms DESC LIMIT $4) newest
                      ORDER BY open_time_ms"""
            args = (spec.symbol, interval, end, limit)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        w = self.wire(spec)
        size_ms = INTERVAL_MS[interval]
        return [
            [
                r["open_time_ms"],
                w.price(r["open_ticks"]),
                w.price(r["high_ticks"]),
                w.price(r["low_ticks"]),
                w.price(r["close_ticks"]),
                w.quantity(int(r["volume_lots"])),
                r["open_time_ms"] + size_ms - 1,
                w.quote(int(r["quote_volume_units"])),
                r["trade_count"],
            ]
            for r in rows
        ]

    async def orders_history(
        self, user_id: str, market: str | None, start_ms: int | None, end_ms: int | None,
        limit: int, before_order_id: int | None = None,
    ) -> list[dict[str, Any]]:
        sql = f"""SELECT {_ORDER_COLUMNS} FROM orders
                  WHERE user_id = $1 AND ($2::text IS NULL OR market = $2)
                    AND created_ms >= $3 AND created_ms <= $4
                    AND ($5::bigint IS NULL OR order_id < $5)
                  ORDER BY order_id DESC LIMIT $6"""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                sql, user_id, market, start_ms or 0,
                INT64_MAX if end_ms is None else end_ms, before_order_id, limit,
            )
            return [(await self._wire_for(conn, r["market"])).order(_order(r)) for r in rows]

    async def fills(
        self, user_id: str, market: str | None, start_ms: int | None, end_ms: int | None,
        limit: int, from_trade_id: int | None = None,
    ) -> list[dict[str, Any]]:
        start, end = start_ms or 0, INT64_MAX if end_ms is None else end_ms
        if from_trade_id is not None:
            if market is None:
                raise CryptexError(
                    ErrorCode.MISSING_FIELD, "market is required with fromId", "market"
                )
            sql = f"""SELECT {_FILL_COLUMNS} FROM fills
                      WHERE user_id = $1 AND market = $2 AND trade_id >= $3
                        AND ts_ms >= $4 AND ts_ms <= $5
                      ORDER BY trade_id, side LIMIT $6"""
            args: tuple[Any, ...] = (user_id, market, from_trade_id, start, end, limit)
        else:
            sql = f"""SELECT {_FILL_COLUMNS} FROM fills
                      WHERE user_id = $1 AND ($2::text IS NULL OR market = $2)
                        AND ts_ms >= $3 AND ts_ms <= $4
                      ORDER BY ts_ms DESC, trade_id DESC, side LIMIT $5"""
            args = (user_id, market, start, end, limit)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
            return [(await self._wire_for(conn, r["market"])).fill(_fill(r)) for r in rows]

    async def trades(
        self, spec: MarketSpec, limit: int, before_trade_id: int | None = None
    ) -> list[dict[str, Any]]:
        sql = f"""SELECT {_TRADE_COLUMNS} FROM trades
                  WHERE market = $1 AND ($2::bigint IS NULL OR trade_id < $2)
                  ORDER BY trade_id DESC LIMIT $3"""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, spec.symbol, before_trade_id, limit)
        w = self.wire(spec)
        return [w.trade(_trade(r)) for r in rows]
