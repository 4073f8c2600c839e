"""The gateway adapter: aiohttp `/ws` sockets on one side, Redis pub/sub on the other.

One pub/sub connection per process subscribes, once each, to every market's `depth@`,
`trades@`, `ticker@` and `bookTicker@` channels, to `markets:changed`, and to `user@<id>`
while at least one local socket follows that user's private streams (such users are also
registered in the user's bucket `keys.subscribers_key`: engines publish `user@<id>` only for registered
users). Each upstream message is decoded once, turned into at most a few outgoing frames,
each encoded once, and queued on every subscribed socket (`fanout.Hub`).

Invariants:
- a private topic (`user.orders#<id>`) is only ever subscribed by a socket authenticated as
  `<id>`, so a user sees only their own orders, fills and balances;
- depth subscribers receive a `depthSnapshot` before any `depthUpdate` and, after a gap in
  the engine's sequence, a new `depthSnapshot` (reason `resync`) before any further update;
  no update that does not continue the previous one is ever forwarded (`book.DepthTracker`);
- a reply to a SUBSCRIBE is queued before the stream's first data message, and a stream's
  Redis subscription is in place before the reply is sent;
- before a SUBSCRIBE naming a private stream is acknowledged, (a) the user is in
  the user's bucket `keys.subscribers_key` with an expiry at least REGISTRATION_TTL_MS ahead of Redis's
  clock (the ZADD has returned) and (b) Redis has confirmed this process's subscription to
  `user@<id>` (its "subscribe" reply came back on the pub/sub connection, not merely sent), so
  every event an engine settles after the acknowledgement reaches the socket;
- a followed user's registration never lapses while Redis answers: it is renewed every
  REGISTRATION_REFRESH_S (retried every second after a failure, and at once after a pub/sub
  reconnect), with REGISTRATION_TTL_MS = 6 refresh intervals of margin; expiries only grow
  (ZADD GT, Redis's clock), so no gateway, whatever its clock, shortens another's; gateways
  never remove a registration, they let it expire (another gateway may follow the same user);
- no client input raises out of a socket's handler: a bad request gets an error reply; a
  failed AUTH, a binary frame or an oversized frame gets the error reply, then a close frame
  (1008, 1003, 1009); an unexpected error is logged and closes the socket with 1011;
- a socket that falls behind is closed with code 1008 and a reason; others never wait for it.

`Gateway` owns its collaborators and wires them together; each keeps the invariants it
states: `upstream.Upstream` (the pub/sub connection, routes, confirmations),
`market_data.MarketData` (markets, depth/trades/ticker handlers, resyncs, candles),
`private.PrivateFeed` (followed users, their registration, private events),
`sessions.Sessions` (sockets and their requests) and `publisher.Publisher` (fan-out).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

import cryptex_common.metrics as metrics
from cryptex_common import keys
from cryptex_common.runtime import add_ops_routes
from cryptex_wsgateway.binance import add_binance_routes
from cryptex_wsgateway.book import DepthTracker
from cryptex_wsgateway.fanout import Connection, Hub
from cryptex_wsgateway.frames import CLOSE_GOING_AWAY, CLOSE_POLICY, close_socket
from cryptex_wsgateway.market_data import MarketData
from cryptex_wsgateway.private import PrivateFeed
from cryptex_wsgateway.publisher import Publisher, now_ms
from cryptex_wsgateway.sessions import Sessions
from cryptex_wsgateway.settings import WsSettings
from cryptex_wsgateway.subscriptions import Subscriptions
from cryptex_wsgateway.upstream import SERVICE, Upstream

log = logging.getLogger(__name__)
# Read when a Gateway is built (tests shorten them by patching this module).
REGISTRATION_REFRESH_S = 10.0
REGISTRATION_TTL_MS = 60_000  # 6 refreshes: a registration outlives 5 failed ones in a row


class Gateway:
    """One process's gateway: `ready` once markets are loaded and the pub/sub connection
    has subscribed every route; `stop` closes every socket (1001) before background work."""

    def __init__(self, settings: WsSettings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.subs = Subscriptions()
        self.hub = Hub(
            settings.max_queue_messages, settings.max_buffer_bytes,
            settings.coalesce_ms / 1000, self._on_slow,
        )
        self.ready = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.publisher = Publisher(self.subs, self.hub)
        self.upstream = Upstream(redis)
        self.market = MarketData(redis, self.upstream, self.publisher,
                                 settings.resync_wait_s, self._spawn)
        self.private = PrivateFeed(
            redis, self.upstream, self.publisher, self.market, self._spawn,
            refresh_s=REGISTRATION_REFRESH_S, ttl_ms=REGISTRATION_TTL_MS,
        )
        self.sessions = Sessions(settings, redis, self.subs, self.hub, self.market,
                                 self.private, lambda: self.ready)
        self.conns = self.sessions.conns
        metrics.REDIS_ERRORS.labels(SERVICE)

    @property
    def pubsub(self) -> Any:
        return self.upstream.pubsub

    @property
    def followed_users(self) -> set[str]:
        return self.private.followed_users

    @property
    def trackers(self) -> dict[str, DepthTracker]:
        return self.market.trackers

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load markets (waiting for Redis if needed) and start listening."""
        self.upstream.routes[keys.MARKETS_CHANGED_CHANNEL.encode()] = self.market.on_markets_changed
        while True:
            try:
                await self.market.reload()
                break
            except (RedisError, OSError) as exc:
                metrics.REDIS_ERRORS.labels(SERVICE).inc()
                log.warning("redis unavailable at start, retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
        self._spawn(self.upstream.listen(self._on_connected, self.market.reset_all))
        self._spawn(self._timers())
        self._spawn(self.private.keep_registered())

    def _on_connected(self) -> None:
        """Every route is subscribed on a new pub/sub connection: resync every book, and
        register followed users at once (their registration may have been lost)."""
        self.market.resync_all()
        self.ready = True
        self._spawn(self.private.register_followed())

    async def stop(self) -> None:
        """Close every socket with a close frame (1001), then stop background work."""
        self.ready = False
        await asyncio.gather(*(
            close_socket(c, CLOSE_GOING_AWAY, "server shutdown") for c in list(self.conns.values())
        ))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.upstream.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.ws_handler)
        add_binance_routes(app, self)  # the Binance-compatible facade under /binance
        # the chart's probes use this port; /metrics is on the ops port only (__main__)
        add_ops_routes(app, self.is_ready, with_metrics=False)

        async def on_shutdown(_: web.Application) -> None:
            await self.stop()

        app.on_shutdown.append(on_shutdown)
        return app

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        return await self.sessions.ws_handler(request)

    async def is_ready(self) -> bool:
        return self.ready and self.pubsub is not None and bool(await self.redis.ping())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _timers(self) -> None:
        """Close candles whose bucket ended; close idle sockets."""
        while True:
            await asyncio.sleep(1.0)
            self.market.close_candles(now_ms())
            self.sessions.close_idle(self.settings.idle_timeout_s, self._spawn)

    def _on_slow(self, conn: Connection, why: str) -> None:
        metrics.WS_SLOW_CLIENTS_DROPPED.inc()
        log.warning("slow client dropped", extra={"conn": conn.id, "why": why})
        self._spawn(close_socket(conn, CLOSE_POLICY, f"slow consumer: {why}"))
