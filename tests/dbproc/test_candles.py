"""Pure candle maths: UTC buckets at every edge, Monday weeks, and the merge rule (any split
and order of trades gives the candle recomputed naively from the raw trades)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptex_common.candles import INTERVALS, Candle, TradeTick, aggregate, merge
from cryptex_common.intervals import CANDLE_INTERVALS_MS as INTERVAL_MS
from cryptex_common.intervals import bucket_start_ms, close_time_ms
from tests.dbproc.support import MONDAY_2024_01_08_MS


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def naive_bucket(ts_ms: int, interval: str) -> int:
    """An independent bucket rule with datetime: floor to the unit, then to the multiple."""
    dt = datetime.fromtimestamp(ts_ms / 1000, UTC).replace(microsecond=(ts_ms % 1000) * 1000)
    if interval == "1w":
        day = dt.replace(hour=0, minute=0, second=0, microsecond=0)
        return ms(day - timedelta(days=day.weekday()))
    if interval == "1d":
        return ms(dt.replace(hour=0, minute=0, second=0, microsecond=0))
    if interval.endswith("h"):
        hours = int(interval[:-1])
        return ms(dt.replace(hour=dt.hour - dt.hour % hours, minute=0, second=0, microsecond=0))
    minutes = int(interval[:-1])
    return ms(dt.replace(minute=dt.minute - dt.minute % minutes, second=0, microsecond=0))


def test_intervals_are_the_seven_of_the_issue() -> None:
    assert INTERVALS == ("1m", "5m", "15m", "1h", "4h", "1d", "1w")


@pytest.mark.parametrize("interval", INTERVALS)
def test_bucket_edges(interval: str) -> None:
    size = INTERVAL_MS[interval]
    start = MONDAY_2024_01_08_MS  # a Monday 00:00 UTC starts a bucket of every interval
    assert bucket_start_ms(start, interval) == start
    assert bucket_start_ms(start - 1, interval) == start - size
    assert bucket_start_ms(start + size - 1, interval) == start
    assert bucket_start_ms(start + size, interval) == start + size
    assert close_time_ms(start, interval) == start + size - 1


def test_week_starts_monday_utc() -> None:
    sunday_last_ms = ms(datetime(2024, 1, 14, 23, 59, 59, 999000, UTC))
    assert bucket_start_ms(sunday_last_ms, "1w") == MONDAY_2024_01_08_MS
    monday = ms(datetime(2024, 1, 15, tzinfo=UTC))
    assert bucket_start_ms(monday, "1w") == monday
    # the epoch (a Thursday) belongs to the week of Monday 1969-12-29
    assert bucket_start_ms(0, "1w") == ms(datetime(1969, 12, 29, tzinfo=UTC))


@given(st.integers(min_value=0, max_value=4_102_444_800_000), st.sampled_from(INTERVALS))
def test_bucket_matches_datetime_rule(ts_ms: int, interval: str) -> None:
    assert bucket_start_ms(ts_ms, interval) == naive_bucket(ts_ms, interval)


def naive_candles(trades: list[TradeTick], interval: str) -> dict[int, tuple[int, ...]]:
    groups: dict[int, list[TradeTick]] = {}
    for t in trades:
        groups.setdefault(naive_bucket(t.ts_ms, interval), []).append(t)
    out: dict[int, tuple[int, ...]] = {}
    for start, ts in groups.items():
        ordered = sorted(ts, key=lambda t: t.trade_id)
        out[start] = (
            ordered[0].price_ticks, max(t.price_ticks for t in ts),
            min(t.price_ticks for t in ts), ordered[-1].price_ticks,
            sum(t.quantity_lots for t in ts), sum(t.quote_units for t in ts), len(ts),
        )
    return out


def ohlcv(c: Candle) -> tuple[int, ...]:
    return (c.open_ticks, c.high_ticks, c.low_ticks, c.close_ticks, c.volume_lots,
            c.quote_volume_units, c.trade_count)


# Times clustered around bucket edges of every interval (±2 s of a Monday, ±3 days).
_EDGE_OFFSETS = [k * INTERVAL_MS[i] for i in INTERVALS for k in (-1, 0, 1)] + [
    k * 3_600_000 for k in range(-72, 73, 5)
]
_ts = st.builds(
    lambda base, jitter: MONDAY_2024_01_08_MS + base + jitter,
    st.sampled_from(_EDGE_OFFSETS), st.integers(-2000, 2000),
)
_trades = st.lists(
    st.tuples(_ts, st.integers(1, 10**9), st.integers(1, 10**6)), min_size=1, max_size=60
).map(lambda rows: [
    TradeTick(trade_id=i + 1, ts_ms=ts, price_ticks=p, quantity_lots=q, quote_units=p * q * 10)
    for i, (ts, p, q) in enumerate(rows)
])


@settings(max_examples=300, deadline=None)
@given(_trades, st.randoms(use_true_random=False))
def test_split_merge_equals_naive_recomputation(trades: list[TradeTick], rnd: random.Random):
    """Trades cut into random batches, batches applied in random order (late batches),
    merged with `merge` == candles recomputed from the raw trades, for every interval."""
    shuffled = trades[:]
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.sample(range(1, len(shuffled)), k=min(len(shuffled) - 1, 4)))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    merged: dict[tuple[str, str, int], Candle] = {}
    for batch in batches:
        for key, delta in aggregate("SOL/USDC", batch).items():
            merged[key] = merge(merged[key], delta) if key in merged else delta
    for interval in INTERVALS:
        expected = naive_candles(trades, interval)
        got = {k[2]: ohlcv(c) for k, c in merged.items() if k[1] == interval}
        assert got == expected, interval


def test_merge_refuses_different_buckets() -> None:
    a = aggregate("M", [TradeTick(1, MONDAY_2024_01_08_MS, 5, 1, 5)], ["1m"])
    b = aggregate("M", [TradeTick(2, MONDAY_2024_01_08_MS + 60_000, 5, 1, 5)], ["1m"])
    with pytest.raises(ValueError):
        merge(next(iter(a.values())), next(iter(b.values())))
