"""Candle intervals and their buckets, defined once: REST /klines, dbproc's candles and the
gateway's kline streams all use these names, lengths and bucket starts.

Every bucket is `[start, start + length)` in UTC milliseconds. Intervals of a day or less
are aligned on the Unix epoch; `1w` buckets start on Monday 00:00 UTC (ISO weeks), i.e. they
are aligned on 1970-01-05, the first Monday after the epoch (a Thursday)."""

from __future__ import annotations

CANDLE_INTERVALS_MS: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
    "1w": 604_800_000,
}

MINUTE_MS = 60_000
DAY_MS = 86_400_000
# 1970-01-01 was a Thursday; the first Monday 00:00 UTC is four days later.
FIRST_MONDAY_MS = 4 * DAY_MS


def bucket_origin_ms(interval: str) -> int:
    """Where the interval's buckets are aligned: the epoch, or its first Monday for 1w."""
    return FIRST_MONDAY_MS if interval == "1w" else 0


def bucket_start_ms(ts_ms: int, interval: str) -> int:
    """Open time (UTC ms) of the `interval` bucket holding `ts_ms`. KeyError if unknown."""
    return ts_ms - (ts_ms - bucket_origin_ms(interval)) % CANDLE_INTERVALS_MS[interval]


def close_time_ms(open_time_ms: int, interval: str) -> int:
    """Last millisecond of the bucket (Binance's `closeTime`)."""
    return open_time_ms + CANDLE_INTERVALS_MS[interval] - 1
