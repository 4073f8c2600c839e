"""Per-socket protocol: the `/ws` handler, its frame checks and rate limit, and the
requests (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, AUTH, PING).

Invariants:
- exactly one reply per request; no client input raises out of a socket's handler: a bad
  request gets an error reply; a failed AUTH, a binary frame or an oversized frame gets the
  error reply, then a close frame (1008, 1003, 1009); an unexpected error is logged and
  closes the socket with 1011;
- a private topic (`user.orders#<id>`) is only ever subscribed by a socket authenticated as
  `<id>`, so a user sees only their own orders, fills and balances;
- SUBSCRIBE is all or nothing; its reply is queued before the stream's first data message,
  and a private stream is acknowledged only once `PrivateFeed.follow` has returned;
- a socket leaves `conns` and every topic once its handler ends, whatever the cause.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

import cryptex_common.metrics as metrics
from cryptex_common import keys
from cryptex_common.auth import REPLAY_GUARD_MS, WS_AUTH_PATH, signature_matches, timestamp_fresh
from cryptex_common.resp import as_text
from cryptex_wsgateway.fanout import Connection, Hub
from cryptex_wsgateway.frames import CLOSE_INTERNAL, CLOSE_POLICY, close_socket, inbound_texts
from cryptex_wsgateway.market_data import MarketData
from cryptex_wsgateway.private import PrivateFeed
from cryptex_wsgateway.protocol import (
    AuthParams,
    ProtocolError,
    Request,
    encode_text_frame,
    error_reply,
    parse_request,
    reply,
)
from cryptex_wsgateway.publisher import count_subscriptions, now_ms
from cryptex_wsgateway.settings import WsSettings
from cryptex_wsgateway.streams import Stream, StreamError, parse_stream
from cryptex_wsgateway.subscriptions import (
    Subscriptions,
    TooManyStreams,
    private_topic,
    stream_of_topic,
)
from cryptex_wsgateway.upstream import SERVICE

log = logging.getLogger("cryptex_wsgateway.gateway")


class RequestFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Sessions:
    """Every open socket of this process (`conns`) and the handling of its requests."""

    def __init__(self, settings: WsSettings, redis: Redis, subs: Subscriptions, hub: Hub,
                 market: MarketData, private: PrivateFeed, ready: Callable[[], bool]) -> None:
        self.settings = settings
        self.redis = redis
        self.subs = subs
        self.hub = hub
        self.market = market
        self.private = private
        self._ready = ready
        self.conns: dict[int, Connection] = {}
        self._ids = itertools.count(1)

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        if not self._ready():
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
        try:
            await self._read(conn, ws)
        finally:
            await self._forget(conn)
        return ws

    async def _read(self, conn: Connection, ws: web.WebSocketResponse) -> None:
        """Handle inbound frames (`frames.inbound_texts`' limits) until the socket closes or
        must be closed."""
        async for text in inbound_texts(conn, ws, self.settings, self):
            await self._handle(conn, text)
            if conn.closing:
                break

    # --- frames.Refusals: the native protocol's words for a refused frame ----------------
    def binary(self, conn: Connection) -> None:
        self._reply(conn, error_reply(None, "BAD_FRAME", "binary frames are not accepted: send JSON text"))

    def too_big(self, conn: Connection, why: str) -> None:
        self._reply(conn, error_reply(None, "FRAME_TOO_BIG", why))

    def rate_limited(self, conn: Connection, text: str) -> None:
        self._reply(conn, error_reply(_request_id(text), "RATE_LIMITED",
                                      f"at most {self.settings.rate_per_s:g} messages per second"))

    async def _forget(self, conn: Connection) -> None:
        conn.closing = True
        if self.conns.pop(conn.id, None) is None:
            return
        metrics.WS_CONNECTIONS.dec()
        count_subscriptions(self.subs.drop(conn), -1)
        if conn.user_id is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.private.unfollow_if_unused(conn.user_id)

    def _reply(self, conn: Connection, payload: bytes) -> None:
        self.hub.send(conn, encode_text_frame(payload))

    async def _handle(self, conn: Connection, data: str | bytes) -> None:
        """Exactly one reply per request; a failed AUTH then closes the socket (1008)."""
        try:
            req = parse_request(data)
        except ProtocolError as exc:
            self._reply(conn, error_reply(exc.request_id, exc.code, exc.message))
            if exc.close is not None:
                await close_socket(conn, exc.close, f"auth failed: {exc.code}")
            return
        try:
            await self._dispatch(conn, req)
        except RequestFailed as exc:
            self._reply(conn, error_reply(req.id, exc.code, exc.message))
            if req.method == "AUTH":
                await close_socket(conn, CLOSE_POLICY, f"auth failed: {exc.code}")
        except (RedisError, OSError):
            metrics.REDIS_ERRORS.labels(SERVICE).inc()
            self._reply(conn, error_reply(req.id, "UNAVAILABLE", "try again shortly"))
        except Exception:  # a bug: logged once, and the socket closed properly
            log.exception("request failed", extra={"conn": conn.id, "method": req.method})
            self._reply(conn, error_reply(req.id, "INTERNAL", "internal error"))
            await close_socket(conn, CLOSE_INTERNAL, "internal error")

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
        """(stream, topic) per name; a private stream's topic is bound to the socket's user."""
        out = []
        for name in names:
            try:
                stream = parse_stream(name, self.market.markets)
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
        """All or nothing. A private stream is acknowledged only once `PrivateFeed.follow`
        has returned; if it fails, the topics just added are removed again."""
        parsed = self._parse_streams(conn, req.params)
        try:
            new = set(self.subs.add(conn, [t for _, t in parsed], self.settings.max_streams))
        except TooManyStreams as exc:
            raise RequestFailed("TOO_MANY_STREAMS", str(exc)) from None
        count_subscriptions(new, +1)
        if conn.user_id is not None and any(s.private for s, _ in parsed):
            try:
                await self.private.follow(conn.user_id)
            except (RedisError, OSError, TimeoutError):
                count_subscriptions(self.subs.remove(conn, new), -1)
                with contextlib.suppress(RedisError, OSError):
                    await self.private.unfollow_if_unused(conn.user_id)
                raise RequestFailed("UNAVAILABLE", "private streams unavailable; try again shortly") from None
        self._reply(conn, reply(req.id, None))
        for stream, topic in parsed:
            if topic in new:
                self._send_initial(conn, stream)

    def _send_initial(self, conn: Connection, stream: Stream) -> None:
        """What a new subscriber needs before the updates: a snapshot or the latest value."""
        if stream.channel == "user.balances":
            if conn.user_id is not None:
                self.private.refresh_balances(conn.user_id, list(self.market.asset_decimals))
            return
        payload = self.market.initial_message(stream)
        if payload is not None:
            self._reply(conn, payload)

    async def _unsubscribe(self, conn: Connection, req: Request) -> None:
        parsed = self._parse_streams(conn, req.params)
        count_subscriptions(self.subs.remove(conn, [t for _, t in parsed]), -1)
        if conn.user_id is not None:
            await self.private.unfollow_if_unused(conn.user_id)

    async def _auth(self, conn: Connection, p: AuthParams) -> dict[str, str]:
        """Checks in order: fresh timestamp, known key, signature, not replayed, same user."""
        api_key, ts, signature = p.api_key, p.timestamp, p.signature
        if not timestamp_fresh(ts, now_ms()):
            raise RequestFailed("STALE_TIMESTAMP", "params.timestamp is outside the +/-5 s window of the server clock")
        user_id = await self.redis.get(keys.api_key_key(api_key))
        if user_id is None:
            raise RequestFailed("UNAUTHORIZED", "unknown API key")
        uid = as_text(user_id)
        secret = await self.redis.hget(keys.user_key(uid), "apiSecret")
        if secret is None or not signature_matches(
            as_text(secret), ts, "GET", WS_AUTH_PATH, b"", signature
        ):
            raise RequestFailed("BAD_SIGNATURE", "signature does not match")
        if not await self.redis.set(keys.signature_key(uid, signature), 1, nx=True, px=REPLAY_GUARD_MS):
            raise RequestFailed("REPLAYED_REQUEST", "this signature was already used")
        if conn.user_id is not None and conn.user_id != uid:
            raise RequestFailed("FORBIDDEN", "socket is already authenticated as another user")
        conn.user_id = uid
        return {"userId": uid}

    def close_idle(self, idle_timeout_s: float, spawn: Callable[[Any], Any]) -> None:
        """Close sockets silent for `idle_timeout_s` that hold no subscription."""
        limit = time.monotonic() - idle_timeout_s
        for conn in list(self.conns.values()):
            if not conn.closing and conn.last_seen < limit and not self.subs.count(conn):
                spawn(close_socket(conn, 1000, "idle: no subscription"))




def _request_id(data: str | bytes) -> object:
    """The id of a request we refuse to process, if it can be read cheaply."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    rid = doc.get("id") if isinstance(doc, dict) else None
    usable = (isinstance(rid, int) and not isinstance(rid, bool)) or (isinstance(rid, str) and len(rid) <= 64)
    return rid if usable else None
