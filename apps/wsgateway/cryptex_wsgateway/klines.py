"""Candles (klines) built from the engine's trades. Pure, no I/O.

A candle covers `[openTime, closeTime]`: the `cryptex_common.intervals` bucket of the
trade's timestamp (the same buckets as dbproc's candle table; weeks start on Monday).
Trades arrive in the engine's publish order, which is trade id order, so open and close
are the lowest and highest trade id's prices, as in dbproc's candles.

Invariants:
- open/close are the first/last trade's price in the bucket (in trade order), high/low the
  extremes, volume and quoteVolume exact Decimal sums of the trades' quantity and
  quoteQuantity, count the number of trades; no float anywhere;
- a candle is reported `closed` exactly once: when a trade of a later bucket arrives or when
  `tick(now)` passes its closeTime; after that it never changes (a late trade for a closed
  bucket is ignored: the DB processor's candles are the historical record);
- a bucket without trades produces no candle.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cryptex_common.intervals import bucket_start_ms


@dataclass(slots=True)
class Candle:
    open_time: int
    close_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    count: int

    def to_wire(self, market: str, interval: str, closed: bool) -> dict[str, Any]:
        return {
            "e": "kline",
            "market": market,
            "interval": interval,
            "openTime": self.open_time,
            "closeTime": self.close_time,
            "open": str(self.open),
            "high": str(self.high),
            "low": str(self.low),
            "close": str(self.close),
            "volume": str(self.volume),
            "quoteVolume": str(self.quote_volume),
            "count": self.count,
            "closed": closed,
        }


ParsedTrade = tuple[int, Decimal, Decimal, Decimal]  # ts ms, price, quantity, quote quantity


def parse_trades(trades: list[dict[str, Any]]) -> list[ParsedTrade]:
    """Once per upstream message, shared by every interval's builder."""
    return [
        (int(t["ts"]), Decimal(t["price"]), Decimal(t["quantity"]), Decimal(t["quoteQuantity"]))
        for t in trades
    ]


class KlineBuilder:
    """The open candle of one market and interval."""

    def __init__(self, market: str, interval: str, interval_ms: int) -> None:
        self.market = market
        self.interval = interval
        self.interval_ms = interval_ms
        self.current: Candle | None = None

    def add_trades(self, trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fold one batch of trades in; returns the closed candle (if a bucket ended) and the
        open candle's update, in that order."""
        return self.fold(parse_trades(trades), report=True)

    def fold(self, trades: list[ParsedTrade], report: bool) -> list[dict[str, Any]]:
        """`add_trades` on parsed trades; with `report` False (nobody subscribes to this
        interval) the candle is updated the same but no message is built."""
        out: list[dict[str, Any]] = []
        changed = False
        for ts, price, qty, quote in trades:
            bucket = bucket_start_ms(ts, self.interval)
            c = self.current
            if c is not None and bucket < c.open_time:
                continue  # late trade for a closed bucket
            if c is not None and bucket > c.open_time:
                if report:
                    out.append(c.to_wire(self.market, self.interval, closed=True))
                c = self.current = None
                changed = False
            if c is None:
                self.current = Candle(
                    bucket, bucket + self.interval_ms - 1, price, price, price, price,
                    qty, quote, 1,
                )
            else:
                c.high = max(c.high, price)
                c.low = min(c.low, price)
                c.close = price
                c.volume += qty
                c.quote_volume += quote
                c.count += 1
            changed = True
        if changed and report and self.current is not None:
            out.append(self.current.to_wire(self.market, self.interval, closed=False))
        return out

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        """Close the open candle once its bucket has ended."""
        c = self.current
        if c is None or now_ms <= c.close_time:
            return []
        self.current = None
        return [c.to_wire(self.market, self.interval, closed=True)]
