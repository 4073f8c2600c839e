"""Binance stream sockets: `/binance/ws`, `/binance/ws/<stream | listenKey | anything>` and
`/binance/stream?streams=a/b`, with Binance's live control messages.

Requests: `{"method": "SUBSCRIBE" | "UNSUBSCRIBE" | "LIST_SUBSCRIPTIONS" | "SET_PROPERTY" |
"GET_PROPERTY", "params": [...], "id": ID}`; replies `{"result": R, "id": ID}` or
`{"error": {"code": C, "msg": M}, "id": ID}` with Binance's codes (0 unknown property,
1 bad value type, 2 invalid request, 3 invalid JSON).

Invariants:
- exactly one reply per text frame; a SUBSCRIBE is all or nothing and its reply is queued
  before the first data message of its streams;
- a URL naming a bad stream is refused with HTTP 400 before the upgrade; a URL segment
  without `@` is a listen key when Redis knows it (the socket carries that user's events
  from the moment the handshake completes), otherwise a plain socket for live SUBSCRIBE
  (ccxt.pro connects to `/ws/0`);
- the gateway's per-socket limits hold here too (frame size, message rate, stream count,
  bounded send queue); a socket leaves every subscription and user feed when it closes.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

import cryptex_common.metrics as metrics
from cryptex_common import keys
from cryptex_common.resp import as_text
from cryptex_wsgateway.binance.feed import PublicFeed
from cryptex_wsgateway.binance.streams import BinanceStream, BinanceStreamError, could_be_stream
from cryptex_wsgateway.binance.userdata import UserData
from cryptex_wsgateway.fanout import Connection
from cryptex_wsgateway.frames import close_socket, inbound_texts
from cryptex_wsgateway.protocol import encode_text_frame
from cryptex_wsgateway.subscriptions import TooManyStreams

if TYPE_CHECKING:
    from cryptex_wsgateway.gateway import Gateway

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
MAX_PARAMS = 1024
MAX_LISTEN_KEY_CHARS = 128


class BadRequest(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def error_reply(rid: object, code: int, msg: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": rid})


def result_reply(rid: object, result: object) -> bytes:
    return orjson.dumps({"result": result, "id": rid})


def _usable_id(rid: object) -> bool:
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    return (isinstance(rid, int) and rid >= 0) or (isinstance(rid, str) and len(rid) <= 64)


class StreamSockets:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.public = PublicFeed(gateway)
        self.users = UserData(gateway)
        self.conns: dict[int, Connection] = {}
        self.listen_keys: dict[Connection, list[tuple[str, str]]] = {}  # conn -> [(listen key, user)]
        self._ids = itertools.count(1)

    # --- handshake ----------------------------------------------------------------------
    async def raw_handler(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name", "")
        return await self._open(request, [name] if name else [], combined=False)

    async def combined_handler(self, request: web.Request) -> web.StreamResponse:
        names = [n for n in request.query.get("streams", "").split("/") if n]
        return await self._open(request, names, combined=True)

    async def _open(self, request: web.Request, names: list[str], combined: bool) -> web.StreamResponse:
        if not self.gw.ready or request.transport is None:
            raise web.HTTPServiceUnavailable(text="gateway not ready")
        s = self.gw.settings
        streams, listen_keys = await self._resolve(names, combined)
        if len(streams) > s.max_streams:
            raise web.HTTPBadRequest(text=f"Invalid request: at most {s.max_streams} streams")
        ws = web.WebSocketResponse(heartbeat=s.ping_interval_s, compress=False,
                                   max_msg_size=4 * s.max_frame_bytes)
        conn = Connection(next(self._ids), ws, request.transport, time.monotonic())
        if combined:
            self.public.combined.add(conn)
        self.conns[conn.id] = conn
        metrics.WS_CONNECTIONS.inc()
        try:
            await self._follow_users(conn, listen_keys, combined)
            await ws.prepare(request)
            self.users.release(conn)
            for stream in self.public.subscribe(conn, streams, s.max_streams):
                self.public.initial(conn, stream)
            await self._read(conn, ws)
        finally:
            await self._forget(conn)
        return ws

    async def _resolve(self, names: list[str], combined: bool) -> tuple[list[BinanceStream], list[tuple[str, str]]]:
        """URL names as streams and (listen key, user id) pairs; HTTP 400 on a bad stream."""
        streams: list[BinanceStream] = []
        users: list[tuple[str, str]] = []
        for name in names:
            if could_be_stream(name):
                try:
                    streams.extend(self.public.parse([name]))
                except BinanceStreamError as exc:
                    raise web.HTTPBadRequest(text=f"Invalid request: {exc}") from None
                continue
            user = await self._listen_key_user(name)
            if user is not None:
                users.append((name, user))
            elif combined:
                raise web.HTTPBadRequest(text=f"Invalid request: unknown stream {name[:64]!r}")
        return streams, users

    async def _listen_key_user(self, name: str) -> str | None:
        if not 0 < len(name) <= MAX_LISTEN_KEY_CHARS or not name.isascii() or not name.isalnum():
            return None
        try:
            user = await self.gw.redis.get(keys.listen_key(name))
        except (RedisError, OSError):
            raise web.HTTPServiceUnavailable(text="try again shortly") from None
        return None if user is None else as_text(user)

    async def _follow_users(self, conn: Connection, listen_keys: list[tuple[str, str]], combined: bool) -> None:
        """Attach before the handshake completes: events wait (held) until it has."""
        if not listen_keys:
            return
        self.users.hold(conn)
        for key, user in listen_keys:
            wrapper = (b'{"stream":' + orjson.dumps(key) + b',"data":', b"}") if combined else None
            try:
                await self.users.attach(conn, user, wrapper)
            except (RedisError, OSError, TimeoutError):
                raise web.HTTPServiceUnavailable(text="user data unavailable; try again shortly") from None
            self.listen_keys.setdefault(conn, []).append((key, user))

    async def _forget(self, conn: Connection) -> None:
        conn.closing = True
        if self.conns.pop(conn.id, None) is None:
            return
        metrics.WS_CONNECTIONS.dec()
        self.public.drop(conn)
        for user in {user for _, user in self.listen_keys.pop(conn, ())}:
            await self.users.detach(conn, user)
        self.users.held.pop(conn, None)

    # --- requests -----------------------------------------------------------------------
    async def _read(self, conn: Connection, ws: web.WebSocketResponse) -> None:
        async for text in inbound_texts(conn, ws, self.gw.settings, self):
            self._handle(conn, text)

    # --- frames.Refusals: Binance's words for a refused frame ---------------------------
    def binary(self, conn: Connection) -> None:
        self._reply(conn, error_reply(None, 3, "Invalid JSON: binary frames are not accepted"))

    def too_big(self, conn: Connection, why: str) -> None:
        self._reply(conn, error_reply(None, 2, f"Invalid request: {why}"))

    def rate_limited(self, conn: Connection, text: str) -> None:
        rate = self.gw.settings.rate_per_s
        self._reply(conn, error_reply(None, 2, f"Too many requests: at most {rate:g} per second"))

    def _reply(self, conn: Connection, payload: bytes) -> None:
        self.gw.hub.send(conn, encode_text_frame(payload))

    def _handle(self, conn: Connection, data: str) -> None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._reply(conn, error_reply(None, 3, "Invalid JSON: expected a JSON object"))
            return
        rid = doc.get("id") if isinstance(doc, dict) else None
        if not _usable_id(rid):
            self._reply(conn, error_reply(None, 2, "Invalid request: request ID must be an unsigned integer"))
            return
        try:
            if not isinstance(doc, dict):
                raise BadRequest(2, "Invalid request: a request is a JSON object")
            self._dispatch(conn, doc, rid)
        except BadRequest as exc:
            self._reply(conn, error_reply(rid, exc.code, exc.msg))

    def _dispatch(self, conn: Connection, doc: dict[str, Any], rid: object) -> None:
        method, params = doc.get("method"), doc.get("params")
        if method not in METHODS:
            shown = method[:20] if isinstance(method, str) else "null"
            raise BadRequest(2, f"Invalid request: unknown variant `{shown}`, expected one of "
                                f"`{'`, `'.join(METHODS)}`")
        if method == "LIST_SUBSCRIPTIONS":
            self._reply(conn, result_reply(rid, self.public.names_of(conn)))
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            self._reply(conn, result_reply(rid, self._property(conn, method, params)))
        else:
            streams = self._streams(params)
            if method == "UNSUBSCRIBE":
                self.public.unsubscribe(conn, [s.name for s in streams])
                self._reply(conn, result_reply(rid, None))
                return
            try:
                added = self.public.subscribe(conn, streams, self.gw.settings.max_streams)
            except TooManyStreams as exc:
                raise BadRequest(2, f"Invalid request: {exc}") from None
            self._reply(conn, result_reply(rid, None))
            for stream in added:
                self.public.initial(conn, stream)

    def _streams(self, params: object) -> list[BinanceStream]:
        if not isinstance(params, list) or not params or len(params) > MAX_PARAMS:
            raise BadRequest(2, f"Invalid request: params must be a list of 1 to {MAX_PARAMS} stream names")
        try:
            return self.public.parse(params)
        except BinanceStreamError as exc:
            raise BadRequest(2, f"Invalid request: {exc}") from None

    def _property(self, conn: Connection, method: str, params: object) -> bool | None:
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            raise BadRequest(2, "Invalid request: property name must be a string")
        if params[0] != "combined":
            raise BadRequest(0, "Unknown property")
        if method == "GET_PROPERTY":
            return conn in self.public.combined
        if len(params) != 2 or not isinstance(params[1], bool):
            raise BadRequest(1, "Invalid value type: expected Boolean")
        if params[1]:
            self.public.combined.add(conn)
        else:
            self.public.combined.discard(conn)
        return None

    # --- listen keys and shutdown -------------------------------------------------------
    async def expire_listen_keys(self) -> None:
        """Close the sockets whose listen key expired or was deleted, after Binance's
        `listenKeyExpired` event."""
        followed = [(conn, key) for conn, pairs in self.listen_keys.items() for key, _ in pairs]
        if not followed:
            return
        try:
            pipe = self.gw.redis.pipeline(transaction=False)
            for _, key in followed:
                pipe.exists(keys.listen_key(key))
            alive = await pipe.execute()
        except (RedisError, OSError):
            return
        for (conn, key), exists in zip(followed, alive, strict=True):
            if not exists and not conn.closing:
                event = {"e": "listenKeyExpired", "E": int(time.time() * 1000), "listenKey": key}
                self.gw.hub.send(conn, self.public.frame_for(conn, key, event))
                await close_socket(conn, 1000, "listen key expired")

    async def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.conns.values()):
            await close_socket(conn, code, reason)
