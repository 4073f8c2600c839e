"""The Binance WebSocket API subset at `/binance/ws-api/v3`: `userDataStream.subscribe.signature`
(how current ccxt.pro follows spot user data), `userDataStream.unsubscribe`,
`session.subscriptions`, `ping` and `time`.

Requests: `{"id": ID, "method": M, "params": {...}}`; replies `{"id": ID, "status": 200,
"result": R, "rateLimits": []}` or `{"id": ID, "status": 4xx, "error": {"code": -NNNN,
"msg": M}, "rateLimits": []}` with Binance's codes and texts. Events of a subscription:
`{"subscriptionId": N, "event": {...}}`.

Signature: hex HMAC-SHA256(apiSecret, "k1=v1&k2=v2...") over every param but `signature`,
sorted by name (Binance's rule for WS API requests), with the same API keys as `/api/v1`
and `/api/v3`; `timestamp` within `recvWindow` (default 5000, at most 60000 ms) and at most
1000 ms ahead of the server clock.

Invariants:
- exactly one reply per text frame; a subscription's reply is queued only once the user's
  events are ensured (`UserData.attach` returned), before any of its events;
- a socket receives only the events of the users it subscribed with their own signatures;
  everything it followed is released when it closes.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

import cryptex_common.metrics as metrics
from cryptex_common import keys
from cryptex_common.resp import as_text
from cryptex_wsgateway.binance.sockets import StreamSockets
from cryptex_wsgateway.fanout import Connection
from cryptex_wsgateway.frames import close_socket, inbound_texts
from cryptex_wsgateway.protocol import encode_text_frame

if TYPE_CHECKING:
    from cryptex_wsgateway.gateway import Gateway

DEFAULT_RECV_WINDOW_MS = 5_000
MAX_RECV_WINDOW_MS = 60_000
MAX_AHEAD_MS = 1_000


class ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def _missing(name: str) -> ApiError:
    return ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _value_text(v: object) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def signature_payload(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={_value_text(params[k])}" for k in sorted(params) if k != "signature")


class WsApi:
    def __init__(self, gateway: Gateway, streams: StreamSockets) -> None:
        self.gw = gateway
        self.users = streams.users
        self.conns: dict[int, Connection] = {}
        self.subscriptions: dict[Connection, dict[int, str]] = {}  # conn -> subscription id -> user
        self._ids = itertools.count(1)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        if not self.gw.ready or request.transport is None:
            raise web.HTTPServiceUnavailable(text="gateway not ready")
        s = self.gw.settings
        ws = web.WebSocketResponse(heartbeat=s.ping_interval_s, compress=False,
                                   max_msg_size=4 * s.max_frame_bytes)
        await ws.prepare(request)
        conn = Connection(next(self._ids), ws, request.transport, time.monotonic())
        self.conns[conn.id] = conn
        self.subscriptions[conn] = {}
        metrics.WS_CONNECTIONS.inc()
        try:
            await self._read(conn, ws)
        finally:
            conn.closing = True
            self.conns.pop(conn.id, None)
            metrics.WS_CONNECTIONS.dec()
            for user in set(self.subscriptions.pop(conn, {}).values()):
                await self.users.detach(conn, user)
        return ws

    async def _read(self, conn: Connection, ws: web.WebSocketResponse) -> None:
        async for text in inbound_texts(conn, ws, self.gw.settings, self):
            await self._handle(conn, text)

    # --- frames.Refusals: the WebSocket API's words for a refused frame ----------------
    def binary(self, conn: Connection) -> None:
        self._send(conn, {"id": None, "status": 400, "error": {
            "code": -1000, "msg": "Malformed request: binary frames are not accepted."}})

    def too_big(self, conn: Connection, why: str) -> None:
        self._send(conn, {"id": None, "status": 400, "error": {"code": -1000, "msg": f"Malformed request: {why}."}})

    def rate_limited(self, conn: Connection, text: str) -> None:
        self._send(conn, {"id": None, "status": 429, "error": {
            "code": -1003, "msg": "Too many requests; please use the WebSocket Streams for live updates."}})

    def _send(self, conn: Connection, doc: dict[str, Any]) -> None:
        doc["rateLimits"] = []
        self.gw.hub.send(conn, encode_text_frame(orjson.dumps(doc)))

    async def _handle(self, conn: Connection, data: str) -> None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            self._send(conn, {"id": None, "status": 400, "error": {
                "code": -1000, "msg": "Malformed request: a request is a JSON object."}})
            return
        rid = doc.get("id")
        if not isinstance(rid, int | str | None) or (isinstance(rid, str) and len(rid) > 64):
            rid = None
        try:
            result = await self._dispatch(conn, doc.get("method"), doc.get("params") or {})
        except ApiError as exc:
            self._send(conn, {"id": rid, "status": exc.status,
                              "error": {"code": exc.code, "msg": exc.msg}})
            return
        except (RedisError, OSError, TimeoutError):
            self._send(conn, {"id": rid, "status": 503, "error": {
                "code": -1007, "msg": "Timeout waiting for response from backend server. "
                                      "Send status unknown; execution status unknown."}})
            return
        self._send(conn, {"id": rid, "status": 200, "result": result})

    async def _dispatch(self, conn: Connection, method: object, params: Any) -> Any:
        if not isinstance(params, dict):
            raise ApiError(400, -1104, "Not all sent parameters were read.")
        if method == "ping":
            return {}
        if method == "time":
            return {"serverTime": int(time.time() * 1000)}
        if method == "userDataStream.subscribe.signature":
            return await self._subscribe(conn, params)
        if method == "userDataStream.unsubscribe":
            return await self._unsubscribe(conn, params)
        if method == "session.subscriptions":
            return [{"subscriptionId": sid} for sid in sorted(self.subscriptions.get(conn, {}))]
        raise ApiError(400, -1020, "This operation is not supported.")

    async def _subscribe(self, conn: Connection, params: dict[str, Any]) -> dict[str, int]:
        user = await self._verify(params)
        subs = self.subscriptions[conn]
        for sid, followed in subs.items():
            if followed == user:
                return {"subscriptionId": sid}
        sid = max(subs, default=-1) + 1
        prefix = b'{"subscriptionId":' + str(sid).encode() + b',"event":'
        await self.users.attach(conn, user, (prefix, b"}"))
        subs[sid] = user
        return {"subscriptionId": sid}

    async def _unsubscribe(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        subs = self.subscriptions[conn]
        wanted = params.get("subscriptionId")
        ids = list(subs) if wanted is None else [wanted]
        for sid in ids:
            if not isinstance(sid, int) or sid not in subs:
                raise ApiError(400, -2035, "User Data Stream subscription not found.")
        for sid in ids:
            user = subs.pop(sid)
            if user not in subs.values():
                await self.users.detach(conn, user)
        return {}

    async def _verify(self, params: dict[str, Any]) -> str:
        """The user of a signed request (Binance's checks, in Binance's order)."""
        api_key, signature, ts = params.get("apiKey"), params.get("signature"), params.get("timestamp")
        if not isinstance(api_key, str) or not api_key or len(api_key) > 128:
            raise _missing("apiKey")
        if not isinstance(signature, str) or not signature:
            raise _missing("signature")
        timestamp = ts if isinstance(ts, int) and not isinstance(ts, bool) else \
            int(ts) if isinstance(ts, str) and ts.isdigit() and len(ts) <= 15 else None
        if timestamp is None:
            raise _missing("timestamp")
        window = params.get("recvWindow", DEFAULT_RECV_WINDOW_MS)
        if not isinstance(window, int) or isinstance(window, bool) or not 0 < window <= MAX_RECV_WINDOW_MS:
            raise ApiError(400, -1131, "recvWindow must be less than 60000")
        now = int(time.time() * 1000)
        if timestamp > now + MAX_AHEAD_MS or now - timestamp > window:
            raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        user = await self.gw.redis.get(keys.api_key_key(api_key))
        if user is None:
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        uid = as_text(user)
        secret = await self.gw.redis.hget(keys.user_key(uid), "apiSecret")
        expected = hmac.new(as_text(secret or b"").encode(), signature_payload(params).encode(),
                            hashlib.sha256).hexdigest()
        if secret is None or not hmac.compare_digest(expected, signature.lower()):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        return uid

    async def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.conns.values()):
            await close_socket(conn, code, reason)
