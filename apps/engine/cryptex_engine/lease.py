"""The market's lease and fencing epoch: one writer per market.

Invariants:
- An engine writes nothing for a market before `acquire` returned True: the lease script
  gave it a new epoch (INCR) and the lease key holds that epoch.
- The lease is renewed every third of its TTL; losing it is final (`Fenced`): the settle
  and snapshot scripts refuse a stale epoch or a lapsed lease anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis

from cryptex_common import keys, metrics
from cryptex_common.ledger import lua_source

log = logging.getLogger("cryptex.engine")


class Fenced(Exception):
    """Another engine owns this market now; this one must stop without writing."""


class Lease:
    def __init__(self, redis: Redis, symbol: str, ttl_ms: int) -> None:
        self.symbol = symbol
        self.ttl_ms = ttl_ms
        self.epoch = 0
        self._script: Any = redis.register_script(lua_source("lease.lua"))
        self._keys = [keys.engine_epoch_key(symbol), keys.engine_lease_key(symbol)]

    async def _call(self, action: str, epoch: int) -> int:
        return int(await self._script(keys=self._keys, args=[action, str(epoch), self.ttl_ms]))

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the market's lease; False if stopped first."""
        waited = False
        while not stop.is_set():
            epoch = await self._call("acquire", 0)
            if epoch:
                self.epoch = epoch
                log.info("engine owns market", extra={"market": self.symbol, "epoch": epoch})
                return True
            if not waited:
                log.warning("another engine holds this market; standing by",
                            extra={"market": self.symbol})
                metrics.ENGINE_FENCED.labels(market=self.symbol).inc()
                waited = True
            await asyncio.sleep(self.ttl_ms / 4000)
        return False

    async def renew(self) -> None:
        if not await self._call("renew", self.epoch):
            raise Fenced(f"lease for {self.symbol} lost (epoch {self.epoch})")

    async def keep(self) -> None:
        """Renew every third of the TTL, in the background, so long replays or batches
        never let it lapse. Losing it is final: settle is then refused anyway."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            await self.renew()

    async def release(self) -> None:
        await self._call("release", self.epoch)
