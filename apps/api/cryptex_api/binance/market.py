"""Public Binance routes: ping, time, exchangeInfo, depth, trades, aggTrades, klines,
ticker/24hr, ticker/price, ticker/bookTicker, avgPrice. They read what the native public
routes read (the engine's `depth:`, `trades:` and `ticker:` keys through the public pool,
dbproc's candles through the history reader) and reshape it.
"""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from cryptex_api.binance import formats, history_sql
from cryptex_api.binance.errors import BinanceError, illegal, mandatory
from cryptex_api.binance.exchange_info import exchange_info
from cryptex_api.public_routes import get_many
from cryptex_common import keys
from cryptex_common.binance import binance_symbol
from cryptex_common.depth import MAX_DEPTH_LIMIT, read_depth
from cryptex_common.intervals import CANDLE_INTERVALS_MS
from cryptex_common.market_data import empty_book
from cryptex_common.markets import MarketSpec

if TYPE_CHECKING:
    from cryptex_api.binance.routes import Facade

_UINT = re.compile(r"[0-9]{1,19}")
AVG_PRICE_MINS = 5


def uint(params: dict[str, str], name: str, default: int | None = None, hi: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not _UINT.fullmatch(raw):
        raise illegal(name, "^[0-9]{1,19}$")
    value = int(raw)
    if hi is not None and value > hi:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '1-{hi}'.")
    return value


def depth_weight(params: dict[str, str]) -> int:
    limit = int(params["limit"]) if params.get("limit", "").isdigit() else 100
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


class Market:
    """The public handlers `(request, params) -> payload`; one per Facade."""

    def __init__(self, facade: Facade) -> None:
        self.facade = facade
        self.api = facade.api

    async def ping(self, _: Any, params: dict[str, str]) -> Any:
        return {}

    async def time(self, _: Any, params: dict[str, str]) -> Any:
        return {"serverTime": int(time.time() * 1000)}

    async def exchange_info(self, _: Any, params: dict[str, str]) -> Any:
        return exchange_info(self.facade.specs(params), self.facade.weights.limit, self.api.settings.rate_limit_per_s)

    async def _json(self, key: str) -> Any:
        raw = await self.api.public_redis.get(key)
        return orjson.loads(raw) if raw else None

    async def depth(self, _: Any, params: dict[str, str]) -> Any:
        spec = self.facade.spec(params)
        limit = uint(params, "limit", 100, MAX_DEPTH_LIMIT) or 100
        book = await read_depth(self.api.public_redis, spec.symbol, limit) or empty_book(spec.symbol)
        return {"lastUpdateId": book["lastUpdateId"], "bids": book["bids"], "asks": book["asks"]}

    async def _recent(self, spec: MarketSpec, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` public trades, oldest first."""
        raw = await self.api.public_redis.lrange(keys.recent_trades_key(spec.symbol), 0, limit - 1)
        return [orjson.loads(t) for t in reversed(raw)]

    async def trades(self, _: Any, params: dict[str, str]) -> Any:
        spec = self.facade.spec(params)
        limit = uint(params, "limit", 500, 1000) or 500
        return [formats.public_trade(t) for t in await self._recent(spec, limit)]

    async def agg_trades(self, _: Any, params: dict[str, str]) -> Any:
        """From the engine's recent trades (the newest 1000), filtered by fromId or time."""
        spec = self.facade.spec(params)
        limit = uint(params, "limit", 500, 1000) or 500
        from_id, start, end = uint(params, "fromId"), uint(params, "startTime"), uint(params, "endTime")
        rows = [formats.agg_trade(t) for t in await self._recent(spec, 1000)]
        if from_id is not None:
            return [r for r in rows if r["a"] >= from_id][:limit]
        if start is not None or end is not None:
            lo, hi = start or 0, end if end is not None else 2**63
            return [r for r in rows if lo <= r["T"] <= hi][:limit]
        return rows[-limit:]

    async def klines(self, _: Any, params: dict[str, str]) -> Any:
        """12-element rows; the taker-buy volumes are summed from the bucket's trades."""
        spec = self.facade.spec(params)
        interval = params.get("interval")
        if not interval:
            raise mandatory("interval")
        if interval not in CANDLE_INTERVALS_MS:
            raise BinanceError(-1120, "Invalid interval.")
        limit = uint(params, "limit", 500, 1000) or 500
        start, end = uint(params, "startTime"), uint(params, "endTime")
        size_ms = CANDLE_INTERVALS_MS[interval]

        async def query(reader: Any) -> Any:
            rows = await reader.klines(spec, interval, start, end, limit)
            takers = await history_sql.taker_buy_volumes(reader, spec, [r[0] for r in rows], size_ms)
            return rows, takers

        rows, takers = await self.api.query_history(query)
        fmt = self.facade.fmt(spec)
        return [[*row, fmt.quantity_text(takers.get(row[0], (0, 0))[0]), fmt.quote_text(takers.get(row[0], (0, 0))[1]),
                 "0"] for row in rows]

    async def _tickers(self, specs: list[MarketSpec], build: Any) -> Any:
        symbols = [s.symbol for s in specs]
        redis = self.api.public_redis
        tickers = await get_many(redis, [keys.ticker_key(s) for s in symbols])
        books: list[Any] = [b or {} for b in await asyncio.gather(*(read_depth(redis, s, 1) for s in symbols))]
        return [build(spec, orjson.loads(t) if t else {}, b)
                for spec, t, b in zip(specs, tickers, books, strict=True)]

    async def ticker_24hr(self, _: Any, params: dict[str, str]) -> Any:
        specs = self.facade.specs(params)
        last_qty = {}
        for spec in specs:
            recent = await self._recent(spec, 1)
            last_qty[spec.symbol] = recent[-1]["quantity"] if recent else None
        out = await self._tickers(specs, lambda spec, t, b: self._day(spec, t, b, last_qty[spec.symbol]))
        return out[0] if "symbol" in params else out

    def _day(self, spec: MarketSpec, t: dict[str, Any], book: dict[str, Any], last_qty: str | None) -> dict[str, Any]:
        fmt = self.facade.fmt(spec)
        zp, zq, zu = fmt.price_text(0), fmt.quantity_text(0), fmt.quote_text(0)
        opened, last = t.get("open") or zp, t.get("last") or zp
        volume, quote = t.get("volume") or zq, t.get("quoteVolume") or zu
        avg = (Decimal(quote) / Decimal(volume)).quantize(Decimal("1e-8")) if Decimal(volume) else Decimal(0)
        bid, ask = _top(book.get("bids")), _top(book.get("asks"))
        return {"symbol": binance_symbol(spec.symbol), "priceChange": fmt.price_text(
                    int((Decimal(last) - Decimal(opened)) / fmt.tick)),
                "priceChangePercent": t.get("changePercent") or "0.00", "weightedAvgPrice": f"{avg:f}",
                "prevClosePrice": opened, "lastPrice": last, "lastQty": last_qty or zq,
                "bidPrice": bid[0] or zp, "bidQty": bid[1] or zq, "askPrice": ask[0] or zp, "askQty": ask[1] or zq,
                "openPrice": opened, "highPrice": t.get("high") or zp, "lowPrice": t.get("low") or zp,
                "volume": volume, "quoteVolume": quote, "openTime": t.get("openTime") or 0,
                "closeTime": t.get("closeTime") or 0, "firstId": -1, "lastId": -1, "count": t.get("count") or 0}

    async def ticker_price(self, _: Any, params: dict[str, str]) -> Any:
        out = await self._tickers(self.facade.specs(params), lambda spec, t, b: {
            "symbol": binance_symbol(spec.symbol), "price": t.get("last") or self.facade.fmt(spec).price_text(0)})
        return out[0] if "symbol" in params else out

    async def book_ticker(self, _: Any, params: dict[str, str]) -> Any:
        def build(spec: MarketSpec, t: dict[str, Any], book: dict[str, Any]) -> dict[str, Any]:
            fmt = self.facade.fmt(spec)
            bid, ask = _top(book.get("bids")), _top(book.get("asks"))
            return {"symbol": binance_symbol(spec.symbol), "bidPrice": bid[0] or fmt.price_text(0),
                    "bidQty": bid[1] or fmt.quantity_text(0), "askPrice": ask[0] or fmt.price_text(0),
                    "askQty": ask[1] or fmt.quantity_text(0)}
        out = await self._tickers(self.facade.specs(params), build)
        return out[0] if "symbol" in params else out

    async def avg_price(self, _: Any, params: dict[str, str]) -> Any:
        """Quote-weighted average of the last 5 minutes' trades (from the engine's recent
        trades); the last price when there were none."""
        spec = self.facade.spec(params)
        fmt = self.facade.fmt(spec)
        now = int(time.time() * 1000)
        recent = await self._recent(spec, 1000)
        window = [t for t in recent if t["ts"] >= now - AVG_PRICE_MINS * 60_000]
        qty = sum(Decimal(t["quantity"]) for t in window)
        if qty:
            price = (sum(Decimal(t["quoteQuantity"]) for t in window) / qty).quantize(Decimal("1e-8"))
            text = f"{price:f}"
        else:
            text = recent[-1]["price"] if recent else fmt.price_text(0)
        return {"mins": AVG_PRICE_MINS, "price": text, "closeTime": recent[-1]["ts"] if recent else now}


def _top(levels: list[list[str]] | None) -> tuple[str | None, str | None]:
    return (levels[0][0], levels[0][1]) if levels else (None, None)

