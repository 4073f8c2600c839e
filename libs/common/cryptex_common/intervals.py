"""Candle intervals, defined once: REST /klines, dbproc's candles and the gateway's kline
streams all use these names and lengths. Buckets are UTC; 1w buckets start Monday 00:00
UTC (dbproc's rule, cryptex_dbproc.candles)."""

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
