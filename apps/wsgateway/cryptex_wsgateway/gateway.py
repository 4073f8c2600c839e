"""The gateway adapter: aiohttp `/ws` sockets on one side, Redis pub/sub on the other.

One pub/sub connection per process subscribes, once each, to every market's `depth@`,
`trades@`, `ticker@` and `bookTicker@` channels, to `markets:changed`, and to `user@<id>`
while at least one local socket follows that user's private streams (such users are also
registered in `keys.PRIVATE_SUBSCRIBERS`: engines publish `user@<id>` only for registered
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
  `keys.PRIVATE_SUBSCRIBERS` with an expiry at least REGISTRATION_TTL_MS ahead of Redis's
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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from redis.asyncio import Redis
from redis.exceptions import RedisError

import cryptex_common.metrics as metrics
from cryptex_common import keys
from cryptex_common.auth import WS_AUTH_PATH, signature_matches, timestamp_fresh
from cryptex_common.markets import MarketSpec
from cryptex_common.money import format_units
from cryptex_common.registry import load_markets
from cryptex_common.runtime import add_ops_routes
from cryptex_wsgateway.book import DepthTracker
from cryptex_wsgateway.fanout import Connection, Hub
from cryptex_wsgateway.klines import KlineBuilder, parse_trades
from cryptex_wsgateway.protocol import (
    AuthParams,
    ProtocolError,
    Request,
    TokenBucket,
    data_message,
    encode_text_frame,
    error_reply,
    parse_request,
    reply,
)
from cryptex_wsgateway.settings import WsSettings
from cryptex_wsgateway.streams import (
    KLINE_INTERVALS_MS,
    PRIVATE_STREAMS,
    Stream,
    StreamError,
    parse_stream,
)
from cryptex_wsgateway.subscriptions import (
    Subscriptions,
    TooManyStreams,
    private_topic,
    stream_of_topic,
)

log = logging.getLogger(__name__)
SERVICE = "wsgateway"
CLOSE_POLICY = 1008  # slow consumer, flood, failed AUTH
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003  # binary frame
CLOSE_TOO_BIG = 1009  # frame over max_frame_bytes
CLOSE_INTERNAL = 1011
REGISTRATION_REFRESH_S = 10.0
REGISTRATION_TTL_MS = 60_000  # 6 refreshes: a registration outlives 5 failed ones in a row
SUBSCRIBE_CONFIRM_S = 5.0  # how long a private SUBSCRIBE waits for Redis's confirmation
# KEYS[1] the private-subscribers ZSET; ARGV[1] ttl ms, ARGV[2..] user ids. Expiries come from
# Redis's clock and only grow (GT); expired members are removed. Returns the expiry written.
REGISTER_LUA = """
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = string.format("%d", now + tonumber(ARGV[1]))
for i = 2, #ARGV do
  redis.call("ZADD", KEYS[1], "GT", expiry, ARGV[i])
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. string.format("%d", now))
return expiry
"""


class RequestFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now_ms() -> int:
    return int(time.time() * 1000)


class Gateway:
    def __init__(self, settings: WsSettings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.subs = Subscriptions()
        self.hub = Hub(
            settings.max_queue_messages, settings.max_buffer_bytes,
            settings.coalesce_ms / 1000, self._on_slow,
        )
        self.markets: dict[str, MarketSpec] = {}
        self.asset_decimals: dict[str, int] = {}
        self.trackers: dict[str, DepthTracker] = {}
        self.klines: dict[str, list[KlineBuilder]] = {}
        self.last_ticker: dict[str, bytes] = {}
        self.last_book_ticker: dict[str, bytes] = {}
        self.conns: dict[int, Connection] = {}
        self.routes: dict[bytes, Callable[[bytes], None]] = {}
        self.pubsub: Any = None
        self.ready = False
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resyncing: set[str] = set()
        self._balance_dirty: dict[str, set[str]] = {}
        self.followed_users: set[str] = set()
        # channel -> resolved once Redis confirmed this connection's SUBSCRIBE to it
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._register_script = redis.register_script(REGISTER_LUA)
        self._sent = {t: metrics.WS_MESSAGES_SENT.labels(t) for t in _STREAM_TYPES}
        self._delay = {t: metrics.WS_FANOUT_DELAY.labels(t) for t in _STREAM_TYPES}
        for t in _STREAM_TYPES:  # zero series before the first subscription / error
            metrics.WS_SUBSCRIPTIONS.labels(t)
        metrics.REDIS_ERRORS.labels(SERVICE)

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load markets (waiting for Redis if needed) and start listening."""
        self.routes[keys.MARKETS_CHANGED_CHANNEL.encode()] = self._on_markets_changed
        while True:
            try:
                await self._reload_markets()
                break
            except (RedisError, OSError) as exc:
                metrics.REDIS_ERRORS.labels(SERVICE).inc()
                log.warning("redis unavailable at start, retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
        self._spawn(self._listen())
        self._spawn(self._timers())
        self._spawn(self._keep_registered())

    async def stop(self) -> None:
        """Close every socket with a close frame (1001), then stop background work."""
        self.ready = False
        await asyncio.gather(
            *(self._close(c, CLOSE_GOING_AWAY, "server shutdown") for c in list(self.conns.values()))
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.ws_handler)
        # the chart's probes use this port; /metrics is on the ops port only (__main__)
        add_ops_routes(app, self.is_ready, with_metrics=False)

        async def on_shutdown(_: web.Application) -> None:
            await self.stop()

        app.on_shutdown.append(on_shutdown)
        return app

    async def is_ready(self) -> bool:
        return self.ready and self.pubsub is not None and bool(await self.redis.ping())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- markets ------------------------------------------------------------------------
    async def _reload_markets(self) -> None:
        specs = await load_markets(self.redis)
        added = [m for m in specs if m not in self.markets]
        removed = [m for m in self.markets if m not in specs]
        self.markets = specs
        self.asset_decimals = {}
        for spec in specs.values():
            self.asset_decimals[spec.base_asset] = spec.base_decimals
            self.asset_decimals[spec.quote_asset] = spec.quote_decimals
        channels: list[bytes] = []
        for m in added:
            metrics.WS_RESNAPSHOTS.labels(m)  # a zero series per market
            self.trackers[m] = DepthTracker(m)
            self.klines[m] = [KlineBuilder(m, i, ms) for i, ms in KLINE_INTERVALS_MS.items()]
            ticker = await self.redis.get(keys.ticker_key(m))
            if ticker:
                self.last_ticker[m] = ticker if isinstance(ticker, bytes) else ticker.encode()
            for channel, handler in self._market_routes(m).items():
                self.routes[channel] = handler
                channels.append(channel)
        gone: list[bytes] = []
        for m in removed:
            for channel in self._market_routes(m):
                self.routes.pop(channel, None)
                gone.append(channel)
            self.trackers.pop(m, None)
            self.klines.pop(m, None)
        if self.pubsub is not None:
            if channels:
                await self.pubsub.subscribe(*channels)
            if gone:
                await self.pubsub.unsubscribe(*gone)
            for m in added:
                self._start_resync(m)
        if added or removed:
            log.info("markets loaded", extra={"added": added, "removed": removed})

    def _market_routes(self, m: str) -> dict[bytes, Callable[[bytes], None]]:
        return {
            keys.depth_channel(m).encode(): lambda raw: self._on_depth(m, raw),
            keys.trades_channel(m).encode(): lambda raw: self._on_trades(m, raw),
            keys.ticker_channel(m).encode(): lambda raw: self._on_ticker(m, raw),
            keys.book_ticker_channel(m).encode(): lambda raw: self._on_book_ticker(m, raw),
        }

    def _on_markets_changed(self, _: bytes) -> None:
        self._spawn(self._reload_markets())

    # --- upstream -----------------------------------------------------------------------
    async def _listen(self) -> None:
        """Read the pub/sub connection forever; on a Redis error reconnect and resync.
        Redis's "subscribe" replies resolve `_confirmed` (see `_confirmation`)."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                channels = list(self.routes)
                await pubsub.subscribe(*channels)
                self.pubsub = pubsub
                added = [c for c in self.routes if c not in set(channels)]  # while subscribing
                if added:
                    await pubsub.subscribe(*added)
                for m in self.trackers:
                    self._start_resync(m)
                self.ready = True
                self._spawn(self._register_followed())
                async for msg in pubsub.listen():
                    self._on_pubsub(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.REDIS_ERRORS.labels(SERVICE).inc()
                log.warning("pub/sub connection lost, reconnecting", extra={"error": str(exc)})
                self.pubsub = None
                # confirmations were for the lost connection; the next one confirms afresh
                self._confirmed = {c: f for c, f in self._confirmed.items() if not f.done()}
                for tracker in self.trackers.values():
                    tracker.reset()  # updates may have been lost while disconnected
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.5)

    def _on_pubsub(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "subscribe":
            fut = self._confirmation(msg["channel"])
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

    def _confirmation(self, channel: bytes) -> asyncio.Future[None]:
        """Resolved when Redis has confirmed the current connection's subscription."""
        fut = self._confirmed.get(channel)
        if fut is None:
            fut = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        return fut

    async def _timers(self) -> None:
        """Close candles whose bucket ended; close idle sockets."""
        while True:
            await asyncio.sleep(1.0)
            now_ms = _now_ms()
            for market, builders in self.klines.items():
                for b in builders:
                    for msg in b.tick(now_ms):
                        self._publish(f"kline_{b.interval}@{market}", "kline", msg)
            limit = time.monotonic() - self.settings.idle_timeout_s
            for conn in list(self.conns.values()):
                if not conn.closing and conn.last_seen < limit and not self.subs.count(conn):
                    self._spawn(self._close(conn, 1000, "idle: no subscription"))

    def _publish(self, topic: str, stream_type: str, data: Any, ts: int | None = None) -> None:
        conns = self.subs.subscribers(topic)
        if not conns:
            return
        frame = encode_text_frame(data_message(stream_of_topic(topic), data))
        self._broadcast(conns, frame, stream_type, ts)

    def _publish_raw(self, stream: str, stream_type: str, raw: bytes, ts: int | None) -> None:
        """Forward an upstream JSON payload as it is, without decoding and encoding it."""
        conns = self.subs.subscribers(stream)
        if not conns:
            return
        payload = b'{"stream":' + orjson.dumps(stream) + b',"data":' + raw + b"}"
        self._broadcast(conns, encode_text_frame(payload), stream_type, ts)

    def _broadcast(self, conns: Any, frame: bytes, stream_type: str, ts: int | None) -> None:
        sent = self.hub.broadcast(conns, frame)
        self._sent[stream_type].inc(sent)
        if ts:
            self._delay[stream_type].observe(max(0, _now_ms() - ts) / 1000)

    def _on_depth(self, market: str, raw: bytes) -> None:
        tracker = self.trackers[market]
        was_live = tracker.live
        for msg in tracker.on_diff(orjson.loads(raw)):
            self._publish(f"depth@{market}", "depth", msg, msg.get("ts"))
        if was_live and not tracker.live:
            metrics.WS_RESNAPSHOTS.labels(market).inc()
            log.warning("depth sequence gap, re-snapshotting", extra={"market": market})
            self._start_resync(market)

    def _start_resync(self, market: str) -> None:
        if market not in self._resyncing:
            self._resyncing.add(market)
            self._spawn(self._resync(market))

    async def _resync(self, market: str) -> None:
        """Read `depth:{M}` until it continues the buffered updates (or the wait is over)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.resync_wait_s
        delay = 0.01
        try:
            while True:
                tracker = self.trackers.get(market)
                if tracker is None or tracker.live:
                    return
                try:
                    raw = await self.redis.get(keys.depth_key(market))
                except (RedisError, OSError):
                    metrics.REDIS_ERRORS.labels(SERVICE).inc()
                    await asyncio.sleep(0.5)
                    continue
                out = tracker.on_snapshot(
                    orjson.loads(raw) if raw else None, force=loop.time() >= deadline
                )
                if out is not None:
                    for msg in out:
                        self._publish(f"depth@{market}", "depth", msg)
                    if not tracker.live:  # a further gap inside the buffered updates
                        metrics.WS_RESNAPSHOTS.labels(market).inc()
                        deadline = loop.time() + self.settings.resync_wait_s
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        finally:
            self._resyncing.discard(market)

    def _on_trades(self, market: str, raw: bytes) -> None:
        trades = orjson.loads(raw)
        ts = trades[0].get("ts") if trades else None
        self._publish_raw(f"trades@{market}", "trades", raw, ts)
        builders = self.klines.get(market)
        if not builders:
            return
        parsed = parse_trades(trades)  # once, not once per interval
        for builder in builders:
            topic = f"kline_{builder.interval}@{market}"
            # every candle is kept up to date; its message is built only for subscribers
            for msg in builder.fold(parsed, report=bool(self.subs.subscribers(topic))):
                self._publish(topic, "kline", msg)

    def _on_ticker(self, market: str, raw: bytes) -> None:
        self.last_ticker[market] = raw
        self._publish_raw(f"ticker@{market}", "ticker", raw, None)

    def _on_book_ticker(self, market: str, raw: bytes) -> None:
        self.last_book_ticker[market] = raw
        self._publish_raw(f"bookTicker@{market}", "bookTicker", raw, None)

    def _on_user(self, user_id: str, raw: bytes) -> None:
        msg = orjson.loads(raw)
        kind = msg.get("type")
        if kind == "order":
            self._publish(private_topic("user.orders", user_id), "user.orders", msg["data"])
        elif kind == "fill":
            self._publish(private_topic("user.fills", user_id), "user.fills", msg["data"])
        elif kind == "balance":
            assets = (msg.get("data") or {}).get("assets") or list(self.asset_decimals)
            self._refresh_balances(user_id, assets)

    def _refresh_balances(self, user_id: str, assets: list[str]) -> None:
        """Push absolute balances read from Redis; one read in flight per user, so the
        last message a subscriber gets is never older than the last hint."""
        if not self.subs.subscribers(private_topic("user.balances", user_id)):
            return
        pending = self._balance_dirty.get(user_id)
        if pending is not None:
            pending.update(assets)
            return
        self._balance_dirty[user_id] = set(assets)
        self._spawn(self._push_balances(user_id))

    async def _push_balances(self, user_id: str) -> None:
        try:
            while self._balance_dirty.get(user_id):
                assets = sorted(a for a in self._balance_dirty[user_id] if a in self.asset_decimals)
                self._balance_dirty[user_id] = set()
                if not assets:
                    continue
                fields = [f for a in assets for f in (keys.available_field(a), keys.locked_field(a))]
                try:
                    values = await self.redis.hmget(keys.balance_key(user_id), fields)
                except (RedisError, OSError):
                    metrics.REDIS_ERRORS.labels(SERVICE).inc()
                    return
                topic = private_topic("user.balances", user_id)
                for i, asset in enumerate(assets):
                    decimals = self.asset_decimals[asset]
                    available, locked = values[2 * i], values[2 * i + 1]
                    self._publish(topic, "user.balances", {
                        "asset": asset,
                        "available": format_units(int(available or 0), decimals),
                        "locked": format_units(int(locked or 0), decimals),
                    })
        finally:
            self._balance_dirty.pop(user_id, None)

    async def _follow_user(self, user_id: str) -> None:
        """Make private events of `user_id` reach this process, before a private SUBSCRIBE
        is acknowledged: registered (ZADD returned) and `user@<id>` confirmed by Redis.
        Raises RedisError/OSError, or TimeoutError when Redis does not confirm in time."""
        channel = keys.user_channel(user_id).encode()
        confirmed = self._confirmation(channel)
        if channel not in self.routes:
            self.routes[channel] = lambda raw: self._on_user(user_id, raw)
            self.followed_users.add(user_id)
            if self.pubsub is not None:  # else `_listen` subscribes it when it reconnects
                await self.pubsub.subscribe(channel)
        await self._register([user_id])
        await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_CONFIRM_S)

    async def _unfollow_if_unused(self, user_id: str) -> None:
        """Drop `user@<id>` once no local socket follows the user. Its registration is left
        to expire: another gateway may follow the same user."""
        channel = keys.user_channel(user_id).encode()
        if channel not in self.routes or self._follows(user_id):
            return
        del self.routes[channel]
        self.followed_users.discard(user_id)
        self._confirmed.pop(channel, None)
        if self.pubsub is not None:
            await self.pubsub.unsubscribe(channel)

    def _follows(self, user_id: str) -> bool:
        return any(self.subs.subscribers(private_topic(s, user_id)) for s in PRIVATE_STREAMS)

    async def _register(self, user_ids: list[str]) -> None:
        """Tell the engines these users have live private subscriptions (keys.PRIVATE_SUBSCRIBERS,
        score = expiry ms by Redis's clock): engines publish `user@<id>` only for them."""
        if user_ids:
            await self._register_script(
                keys=[keys.PRIVATE_SUBSCRIBERS], args=[REGISTRATION_TTL_MS, *user_ids])

    async def _register_followed(self) -> bool:
        try:
            await self._register(sorted(self.followed_users))
            return True
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels(SERVICE).inc()
            log.warning("private subscribers not renewed", extra={"error": str(exc)})
            return False

    async def _keep_registered(self) -> None:
        """Renew every followed user's registration each REGISTRATION_REFRESH_S; after a
        failure, retry every second (the TTL leaves 5 more intervals of margin)."""
        while True:
            ok = await self._register_followed()
            await asyncio.sleep(REGISTRATION_REFRESH_S if ok else 1.0)

    # --- sockets ------------------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        if not self.ready:
            raise web.HTTPServiceUnavailable(text="gateway not ready")
        s = self.settings
        ws = web.WebSocketResponse(
            heartbeat=s.ping_interval_s, compress=False, max_msg_size=4 * s.max_frame_bytes,
        )
        transport = request.transport
        if transport is None:
            raise web.HTTPServiceUnavailable()
        await ws.prepare(request)
        conn = Connection(next(self._ids), ws, transport, time.monotonic())
        self.conns[conn.id] = conn
        metrics.WS_CONNECTIONS.inc()
        bucket = TokenBucket(s.rate_per_s, s.rate_burst, time.monotonic())
        refused = 0
        try:
            async for msg in ws:
                # CLOSE, or ERROR: aiohttp's reader already sent a close frame with its code
                # (1009 far over the size limit, 1007 invalid UTF-8, 1002 protocol error)
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                if conn.closing:
                    continue
                now = time.monotonic()
                conn.last_seen = now
                if msg.type == WSMsgType.BINARY:
                    await self._refuse(conn, "BAD_FRAME", "binary frames are not accepted: send JSON text",
                                       CLOSE_UNSUPPORTED, "binary frame")
                    break
                if len(msg.data) > s.max_frame_bytes:
                    why = f"frame over {s.max_frame_bytes} bytes"
                    await self._refuse(conn, "FRAME_TOO_BIG", why, CLOSE_TOO_BIG, why)
                    break
                if not bucket.allow(now):
                    refused += 1
                    if refused >= s.flood_close_after:
                        await self._close(conn, CLOSE_POLICY, "message rate limit exceeded")
                        break
                    self._reply(conn, error_reply(
                        _request_id(msg.data), "RATE_LIMITED",
                        f"at most {s.rate_per_s:g} messages per second",
                    ))
                    continue
                await self._handle(conn, msg.data)
                if conn.closing:
                    break
        finally:
            await self._forget(conn)
        return ws

    async def _refuse(self, conn: Connection, code: str, message: str, close: int, reason: str) -> None:
        """An error reply (id null), then a close frame: the reply is written first."""
        self._reply(conn, error_reply(None, code, message))
        await self._close(conn, close, reason)

    async def _forget(self, conn: Connection) -> None:
        conn.closing = True
        if self.conns.pop(conn.id, None) is None:
            return
        metrics.WS_CONNECTIONS.dec()
        for topic in self.subs.drop(conn):
            metrics.WS_SUBSCRIPTIONS.labels(_stream_type(topic)).dec()
        if conn.user_id is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._unfollow_if_unused(conn.user_id)

    def _reply(self, conn: Connection, payload: bytes) -> None:
        self.hub.send(conn, encode_text_frame(payload))

    async def _handle(self, conn: Connection, data: str | bytes) -> None:
        """Exactly one reply per request; a failed AUTH then closes the socket (1008)."""
        try:
            req = parse_request(data)
        except ProtocolError as exc:
            self._reply(conn, error_reply(exc.request_id, exc.code, exc.message))
            if exc.close is not None:
                await self._close(conn, exc.close, f"auth failed: {exc.code}")
            return
        try:
            await self._dispatch(conn, req)
        except RequestFailed as exc:
            self._reply(conn, error_reply(req.id, exc.code, exc.message))
            if req.method == "AUTH":
                await self._close(conn, CLOSE_POLICY, f"auth failed: {exc.code}")
        except (RedisError, OSError):
            metrics.REDIS_ERRORS.labels(SERVICE).inc()
            self._reply(conn, error_reply(req.id, "UNAVAILABLE", "try again shortly"))
        except Exception:  # a bug: logged once, and the socket closed properly
            log.exception("request failed", extra={"conn": conn.id, "method": req.method})
            self._reply(conn, error_reply(req.id, "INTERNAL", "internal error"))
            await self._close(conn, CLOSE_INTERNAL, "internal error")

    async def _dispatch(self, conn: Connection, req: Request) -> None:
        result: Any = None
        if req.method == "SUBSCRIBE":
            await self._subscribe(conn, req)
            return
        if req.method == "UNSUBSCRIBE":
            await self._unsubscribe(conn, req)
        elif req.method == "LIST_SUBSCRIPTIONS":
            result = sorted(stream_of_topic(t) for t in self.subs.topics_of(conn))
        elif req.method == "AUTH":
            result = await self._auth(conn, req.params)
        else:
            result = "pong"
        self._reply(conn, reply(req.id, result))

    def _parse_streams(self, conn: Connection, names: list[str]) -> list[tuple[Stream, str]]:
        out = []
        for name in names:
            try:
                stream = parse_stream(name, self.markets)
            except StreamError as exc:
                raise RequestFailed(exc.code, exc.message) from None
            if stream.private:
                if conn.user_id is None:
                    raise RequestFailed("UNAUTHORIZED", f"{stream.name} needs AUTH first")
                out.append((stream, private_topic(stream.name, conn.user_id)))
            else:
                out.append((stream, stream.name))
        return out

    async def _subscribe(self, conn: Connection, req: Request) -> None:
        """All or nothing. A private stream is acknowledged only once `_follow_user` has
        returned; if it fails, the topics just added are removed again."""
        parsed = self._parse_streams(conn, req.params)
        try:
            new = set(self.subs.add(conn, [t for _, t in parsed], self.settings.max_streams))
        except TooManyStreams as exc:
            raise RequestFailed("TOO_MANY_STREAMS", str(exc)) from None
        for topic in new:
            metrics.WS_SUBSCRIPTIONS.labels(_stream_type(topic)).inc()
        if conn.user_id is not None and any(s.private for s, _ in parsed):
            try:
                await self._follow_user(conn.user_id)
            except (RedisError, OSError, TimeoutError):
                for topic in self.subs.remove(conn, new):
                    metrics.WS_SUBSCRIPTIONS.labels(_stream_type(topic)).dec()
                with contextlib.suppress(RedisError, OSError):
                    await self._unfollow_if_unused(conn.user_id)
                raise RequestFailed("UNAVAILABLE", "private streams unavailable; try again shortly") from None
        self._reply(conn, reply(req.id, None))
        for stream, topic in parsed:
            if topic in new:
                self._send_initial(conn, stream)

    def _send_initial(self, conn: Connection, stream: Stream) -> None:
        """What a new subscriber needs before the updates: a snapshot or the latest value."""
        m = stream.market
        payload: bytes | None = None
        if stream.channel == "depth" and m is not None:
            tracker = self.trackers.get(m)
            if tracker is not None and tracker.live:  # else the resync snapshot follows
                payload = data_message(stream.name, tracker.snapshot_message("subscribe"))
        elif stream.channel == "ticker" and m in self.last_ticker:
            payload = b'{"stream":' + orjson.dumps(stream.name) + b',"data":' + self.last_ticker[m] + b"}"
        elif stream.channel == "bookTicker" and m in self.last_book_ticker:
            payload = (
                b'{"stream":' + orjson.dumps(stream.name) + b',"data":'
                + self.last_book_ticker[m] + b"}"
            )
        elif stream.interval is not None and m is not None:
            for b in self.klines.get(m, ()):
                if b.interval == stream.interval and b.current is not None:
                    payload = data_message(stream.name, b.current.to_wire(m, b.interval, False))
        elif stream.channel == "user.balances" and conn.user_id is not None:
            self._refresh_balances(conn.user_id, list(self.asset_decimals))
        if payload is not None:
            self._reply(conn, payload)

    async def _unsubscribe(self, conn: Connection, req: Request) -> None:
        parsed = self._parse_streams(conn, req.params)
        for topic in self.subs.remove(conn, [t for _, t in parsed]):
            metrics.WS_SUBSCRIPTIONS.labels(_stream_type(topic)).dec()
        if conn.user_id is not None:
            await self._unfollow_if_unused(conn.user_id)

    async def _auth(self, conn: Connection, p: AuthParams) -> dict[str, str]:
        """Checks in order: fresh timestamp, known key, signature, not replayed, same user."""
        api_key, ts, signature = p.api_key, p.timestamp, p.signature
        if not timestamp_fresh(ts, _now_ms()):
            raise RequestFailed("STALE_TIMESTAMP", "params.timestamp is outside the +/-5 s window of the server clock")
        user_id = await self.redis.get(keys.api_key_key(api_key))
        if user_id is None:
            raise RequestFailed("UNAUTHORIZED", "unknown API key")
        uid = _text(user_id)
        secret = await self.redis.hget(keys.user_key(uid), "apiSecret")
        if secret is None or not signature_matches(
            _text(secret), ts, "GET", WS_AUTH_PATH, b"", signature
        ):
            raise RequestFailed("BAD_SIGNATURE", "signature does not match")
        if not await self.redis.set(keys.signature_key(signature), 1, nx=True, px=10_000):
            raise RequestFailed("REPLAYED_REQUEST", "this signature was already used")
        if conn.user_id is not None and conn.user_id != uid:
            raise RequestFailed("FORBIDDEN", "socket is already authenticated as another user")
        conn.user_id = uid
        return {"userId": uid}

    def _on_slow(self, conn: Connection, why: str) -> None:
        metrics.WS_SLOW_CLIENTS_DROPPED.inc()
        log.warning("slow client dropped", extra={"conn": conn.id, "why": why})
        self._spawn(self._close(conn, CLOSE_POLICY, f"slow consumer: {why}"))

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        """Send a close frame with the reason; abort the socket if the client does not
        answer within 2 s (a slow client may never read it)."""
        conn.closing = True
        if conn.pending and not conn.transport.is_closing():  # replies queued before the close
            conn.transport.write(b"".join(conn.pending))
        conn.pending = []
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()[:120]), 2.0)
        except Exception:  # the client did not take the close frame: drop the socket
            conn.transport.abort()


_STREAM_TYPES = ("depth", "trades", "ticker", "bookTicker", "kline", *PRIVATE_STREAMS)


def _stream_type(topic: str) -> str:
    name = stream_of_topic(topic)
    channel = name.partition("@")[0]
    return "kline" if channel.startswith("kline_") else channel


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _request_id(data: str | bytes) -> object:
    """The id of a request we refuse to process, if it can be read cheaply."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    rid = doc.get("id") if isinstance(doc, dict) else None
    usable = (isinstance(rid, int) and not isinstance(rid, bool)) or (isinstance(rid, str) and len(rid) <= 64)
    return rid if usable else None
