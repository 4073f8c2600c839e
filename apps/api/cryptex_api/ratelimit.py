"""Token buckets by key (an API key, or a client address for unauthenticated and admin
routes), in process. Each API process limits on its own: with N processes behind a load
balancer a key gets up to N times the rate (documented). Idle buckets are dropped once
there are more than `max_keys`, so many addresses cannot grow the table without bound."""

from __future__ import annotations

import time


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int, clock: object = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def take(self, key: str) -> float:
        """Take one token; 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()  # type: ignore[operator]
        if len(self._state) >= self.max_keys and key not in self._state:
            self._drop_full(now)
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def waiting(self, key: str) -> float:
        """Like `take` without taking: 0.0 when a token is available, else the seconds
        until one is."""
        now = self._clock()  # type: ignore[operator]
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _drop_full(self, now: float) -> None:
        """Forget buckets that have refilled (forgetting them changes nothing); if every
        bucket is still draining, forget the oldest half."""
        refill_s = self.burst / self.rate
        self._state = {k: v for k, v in self._state.items() if now - v[1] < refill_s}
        if len(self._state) >= self.max_keys:
            oldest = sorted(self._state.items(), key=lambda kv: kv[1][1])
            self._state = dict(oldest[len(oldest) // 2:])
