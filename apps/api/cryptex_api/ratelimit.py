"""Per-API-key token buckets, in process. Each API process limits on its own: with N
processes behind a load balancer a key gets up to N times the rate (documented)."""

from __future__ import annotations

import time


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int, clock: object = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def take(self, key: str) -> float:
        """Take one token; 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()  # type: ignore[operator]
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate
