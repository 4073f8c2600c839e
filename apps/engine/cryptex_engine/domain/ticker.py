"""24 h rolling ticker from trades, in one-minute buckets. Pure: time comes from trade
timestamps and the caller's `now_ms`, never from a clock.

Invariants: the window is the 1,440 minute buckets ending with the bucket of `now_ms`;
open is the first trade price in the window, last the latest trade price ever seen
(kept when the window is empty, like Binance's lastPrice), high/low/volume/count over
the window. All values are integers (ticks, lots, quote units).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MINUTE_MS = 60_000
WINDOW_MINUTES = 1440


@dataclass(slots=True)
class _Bucket:
    minute: int
    open_ticks: int
    high_ticks: int
    low_ticks: int
    close_ticks: int
    volume_lots: int
    quote_units: int
    count: int


@dataclass(frozen=True, slots=True)
class TickerView:
    open_ticks: int | None
    high_ticks: int | None
    low_ticks: int | None
    last_ticks: int | None
    volume_lots: int
    quote_units: int
    count: int
    open_time_ms: int
    close_time_ms: int


class RollingTicker:
    def __init__(self) -> None:
        self._buckets: deque[_Bucket] = deque()
        self.last_ticks: int | None = None

    def add_trade(self, ts_ms: int, price_ticks: int, quantity_lots: int, quote_units: int) -> None:
        minute = ts_ms // MINUTE_MS
        self.last_ticks = price_ticks
        if self._buckets and self._buckets[-1].minute >= minute:
            # trades arrive in sequence order; a stream id never goes back in time
            b = self._buckets[-1]
            b.high_ticks = max(b.high_ticks, price_ticks)
            b.low_ticks = min(b.low_ticks, price_ticks)
            b.close_ticks = price_ticks
            b.volume_lots += quantity_lots
            b.quote_units += quote_units
            b.count += 1
            return
        self._buckets.append(
            _Bucket(minute, price_ticks, price_ticks, price_ticks, price_ticks, quantity_lots, quote_units, 1)
        )
        self._expire(minute)

    def _expire(self, now_minute: int) -> None:
        while self._buckets and self._buckets[0].minute <= now_minute - WINDOW_MINUTES:
            self._buckets.popleft()

    def view(self, now_ms: int) -> TickerView:
        now_minute = now_ms // MINUTE_MS
        self._expire(now_minute)
        window = list(self._buckets)
        open_time = (now_minute - WINDOW_MINUTES + 1) * MINUTE_MS
        if not window:
            return TickerView(None, None, None, self.last_ticks, 0, 0, 0, open_time, now_ms)
        return TickerView(
            open_ticks=window[0].open_ticks,
            high_ticks=max(b.high_ticks for b in window),
            low_ticks=min(b.low_ticks for b in window),
            last_ticks=self.last_ticks,
            volume_lots=sum(b.volume_lots for b in window),
            quote_units=sum(b.quote_units for b in window),
            count=sum(b.count for b in window),
            open_time_ms=open_time,
            close_time_ms=now_ms,
        )

    def snapshot(self) -> dict[str, object]:
        return {
            "last": self.last_ticks,
            "buckets": [
                [
                    b.minute,
                    b.open_ticks,
                    b.high_ticks,
                    b.low_ticks,
                    b.close_ticks,
                    b.volume_lots,
                    b.quote_units,
                    b.count,
                ]
                for b in self._buckets
            ],
        }

    @classmethod
    def restore(cls, data: dict[str, object]) -> RollingTicker:
        t = cls()
        last = data.get("last")
        t.last_ticks = int(last) if isinstance(last, int) else None
        buckets = data.get("buckets") or []
        assert isinstance(buckets, list)
        for row in buckets:
            t._buckets.append(_Bucket(*[int(x) for x in row]))
        return t
