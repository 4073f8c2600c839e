"""The markets dbproc drains: the registry, its consumer groups, and change notifications.

Invariants:
- Every registered market has the dbproc consumer group on its events stream (created
  from id "0", so nothing published before dbproc first ran is missed).
- A market is only ever added, never removed: one that disappears from the registry keeps
  being drained (its stream stays in `stream_market`).
- `specs_version` is bumped whenever a spec is new or changed; the round writer saves the
  specs to the `markets` table in its transaction while `specs_saved_version` lags behind.
- `refresh` is set on every `markets:changed` message and on every (re)subscription (a
  message published while unsubscribed is not lost); the registry is also re-read every
  `dbproc_markets_refresh_s` (`refresh_due`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.exceptions as redis_errors

from cryptex_common import keys, metrics
from cryptex_common.markets import MarketSpec
from cryptex_common.registry import load_markets
from cryptex_dbproc.deps import TRANSIENT_REDIS_ERRORS, Dependencies
from cryptex_dbproc.observability import SERVICE, init_market_metrics

log = logging.getLogger("cryptex_dbproc.processor")  # the name log lines always carried


class Markets:
    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.specs: dict[str, MarketSpec] = {}
        self.stream_market: dict[str, str] = {}  # stream key -> symbol
        self.specs_version = 0  # bumped on every registry change
        self.specs_saved_version = -1  # the version last committed to the markets table
        self.refresh = asyncio.Event()
        self.next_refresh_s = 0.0

    def refresh_due(self) -> bool:
        return self.refresh.is_set() or time.monotonic() >= self.next_refresh_s

    async def ensure_group(self, symbol: str) -> None:
        try:
            await self.deps.redis.xgroup_create(
                keys.events_stream(symbol), keys.DBPROC_GROUP, id="0", mkstream=True
            )
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def load(self) -> list[str]:
        """Re-read the registry (with retry); returns the markets seen for the first time."""
        async def load() -> dict[str, MarketSpec]:
            specs = await load_markets(self.deps.redis)
            for symbol in specs:
                await self.ensure_group(symbol)
            return specs

        specs = await self.deps.with_redis("load markets", load)
        added: list[str] = []
        for symbol, spec in specs.items():
            if symbol not in self.specs:
                self.stream_market[keys.events_stream(symbol)] = symbol
                added.append(symbol)
                log.info("market added", extra={"market": symbol})
                init_market_metrics(symbol)
            if self.specs.get(symbol) != spec:
                self.specs_version += 1
            self.specs[symbol] = spec
        self.next_refresh_s = time.monotonic() + self.deps.settings.dbproc_markets_refresh_s
        return added

    async def listen_changed(self) -> None:
        """Sets `refresh` on every markets:changed message; reconnects on Redis errors."""
        stop = self.deps.stop
        while not stop.is_set():
            pubsub = self.deps.redis.pubsub()
            try:
                await pubsub.subscribe(keys.MARKETS_CHANGED_CHANNEL)
                self.refresh.set()  # anything published while we were away
                while not stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self.refresh.set()
            except TRANSIENT_REDIS_ERRORS as exc:
                metrics.REDIS_ERRORS.labels(SERVICE).inc()
                log.warning("markets:changed subscription lost", extra={"error": repr(exc)})
                await self.deps.sleep_or_stop(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
