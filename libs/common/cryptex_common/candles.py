"""Candle maths, shared by dbproc (the candle table) and the gateway (live kline streams):
trades -> candle deltas, and the merge rule. No I/O.

Invariants:
- Buckets are `cryptex_common.intervals`' (the gateway's kline streams use the same).
- A candle's open is the price of its trade with the smallest trade id and its close the
  price of the trade with the largest trade id (`first_trade_id`/`last_trade_id` are kept),
  never "the first trade that happened to arrive". Merging is therefore associative and
  commutative: any split of the trades into batches, in any order, gives the same candle as
  aggregating all trades at once. Each trade must be merged exactly once (the writer only
  feeds trades whose row was newly inserted).
- All values are integers: prices in ticks, volume in lots, quote volume in quote smallest
  units.

dbproc's writer does the same aggregation and merge in SQL (`cryptex_dbproc.store`); this
module is its Python twin, the tests' reference (they recompute candles from the raw trades
with it and compare with the table) and the gateway's live candles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from cryptex_common.intervals import CANDLE_INTERVALS_MS, MINUTE_MS, bucket_start_ms

INTERVALS: tuple[str, ...] = tuple(CANDLE_INTERVALS_MS)


@dataclass(frozen=True, slots=True)
class TradeTick:
    """The part of a trade a candle needs."""

    trade_id: int
    ts_ms: int
    price_ticks: int
    quantity_lots: int
    quote_units: int


@dataclass(slots=True)
class Candle:
    """OHLCV of one (market, interval, bucket), or a delta to merge into one."""

    market: str
    interval: str
    open_time_ms: int
    first_trade_id: int
    open_ticks: int
    last_trade_id: int
    close_ticks: int
    high_ticks: int
    low_ticks: int
    volume_lots: int
    quote_volume_units: int
    trade_count: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.market, self.interval, self.open_time_ms)

    def add_trade(self, t: TradeTick) -> None:
        if t.trade_id < self.first_trade_id:
            self.first_trade_id, self.open_ticks = t.trade_id, t.price_ticks
        if t.trade_id > self.last_trade_id:
            self.last_trade_id, self.close_ticks = t.trade_id, t.price_ticks
        self.high_ticks = max(self.high_ticks, t.price_ticks)
        self.low_ticks = min(self.low_ticks, t.price_ticks)
        self.volume_lots += t.quantity_lots
        self.quote_volume_units += t.quote_units
        self.trade_count += 1


def candle_of_trade(market: str, interval: str, t: TradeTick) -> Candle:
    return Candle(
        market=market,
        interval=interval,
        open_time_ms=bucket_start_ms(t.ts_ms, interval),
        first_trade_id=t.trade_id,
        open_ticks=t.price_ticks,
        last_trade_id=t.trade_id,
        close_ticks=t.price_ticks,
        high_ticks=t.price_ticks,
        low_ticks=t.price_ticks,
        volume_lots=t.quantity_lots,
        quote_volume_units=t.quote_units,
        trade_count=1,
    )


def merge(old: Candle, new: Candle) -> Candle:
    """The candle of the union of two disjoint sets of trades of the same bucket."""
    if old.key != new.key:
        raise ValueError(f"cannot merge candles of different buckets: {old.key} {new.key}")
    first = old if old.first_trade_id <= new.first_trade_id else new
    last = old if old.last_trade_id >= new.last_trade_id else new
    return Candle(
        market=old.market,
        interval=old.interval,
        open_time_ms=old.open_time_ms,
        first_trade_id=first.first_trade_id,
        open_ticks=first.open_ticks,
        last_trade_id=last.last_trade_id,
        close_ticks=last.close_ticks,
        high_ticks=max(old.high_ticks, new.high_ticks),
        low_ticks=min(old.low_ticks, new.low_ticks),
        volume_lots=old.volume_lots + new.volume_lots,
        quote_volume_units=old.quote_volume_units + new.quote_volume_units,
        trade_count=old.trade_count + new.trade_count,
    )


def aggregate(
    market: str, trades: Iterable[TradeTick], intervals: Iterable[str] = INTERVALS
) -> dict[tuple[str, str, int], Candle]:
    """Candle deltas for every interval from one market's trades, keyed by Candle.key.

    Trades are aggregated once into 1m candles, which are then merged into the longer
    intervals: every bucket of every interval is a union of whole 1m buckets (all sizes and
    the Monday origin are whole minutes), so this equals aggregating trades per interval.
    """
    minutes: dict[int, Candle] = {}
    for t in trades:
        start_ms = t.ts_ms - t.ts_ms % MINUTE_MS
        candle = minutes.get(start_ms)
        if candle is None:
            minutes[start_ms] = candle_of_trade(market, "1m", t)
        else:
            candle.add_trade(t)
    out: dict[tuple[str, str, int], Candle] = {}
    for interval in intervals:
        for minute in minutes.values():
            start_ms = bucket_start_ms(minute.open_time_ms, interval)
            part = replace(minute, interval=interval, open_time_ms=start_ms)
            key = part.key
            out[key] = merge(out[key], part) if key in out else part
    return out
