"""The gateway's one Redis pub/sub connection: which channel goes to which handler, the
listen loop that reconnects, and Redis's confirmations of our subscriptions.

Invariants:
- `routes` lists every channel this process wants; each is subscribed once on the current
  connection (a channel routed while the connection is being made is subscribed right after);
- `confirmation(channel)` resolves only when Redis's "subscribe" reply for `channel` came
  back on the *current* connection: a lost connection discards every resolved confirmation,
  so the next connection confirms afresh (pending ones stay, the resubscribe resolves them);
- `pubsub` is None exactly while no connection is established;
- a handler that raises loses only that message (logged), never the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

import cryptex_common.metrics as metrics

log = logging.getLogger("cryptex_wsgateway.gateway")
SERVICE = "wsgateway"

Handler = Callable[[bytes], None]


class Upstream:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.routes: dict[bytes, Handler] = {}
        self.pubsub: Any = None
        # channel -> resolved once Redis confirmed this connection's SUBSCRIBE to it
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}

    async def listen(self, on_connected: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Read the pub/sub connection forever; on a Redis error reconnect. `on_connected`
        runs once every route is subscribed, `on_lost` once a connection is gone."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                channels = list(self.routes)
                await pubsub.subscribe(*channels)
                self.pubsub = pubsub
                added = [c for c in self.routes if c not in set(channels)]  # while subscribing
                if added:
                    await pubsub.subscribe(*added)
                on_connected()
                async for msg in pubsub.listen():
                    self._on_message(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.REDIS_ERRORS.labels(SERVICE).inc()
                log.warning("pub/sub connection lost, reconnecting", extra={"error": str(exc)})
                self.pubsub = None
                # confirmations were for the lost connection; the next one confirms afresh
                self._confirmed = {c: f for c, f in self._confirmed.items() if not f.done()}
                on_lost()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.5)

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "subscribe":
            fut = self.confirmation(msg["channel"])
            if not fut.done():
                fut.set_result(None)
            return
        if kind != "message":
            return
        handler = self.routes.get(msg["channel"])
        if handler is None:
            return
        try:
            handler(msg["data"])
        except Exception:
            log.exception("bad upstream message", extra={"channel": msg["channel"]})

    def confirmation(self, channel: bytes) -> asyncio.Future[None]:
        """Resolved when Redis has confirmed the current connection's subscription."""
        fut = self._confirmed.get(channel)
        if fut is None:
            fut = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        return fut

    def forget_confirmation(self, channel: bytes) -> None:
        self._confirmed.pop(channel, None)

    async def close(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
