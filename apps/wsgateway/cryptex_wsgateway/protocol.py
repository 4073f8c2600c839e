"""The `/ws` control protocol, the inbound rate limit and the outbound frame. Pure, no I/O.

Requests: `{"method": M, "params": P, "id": ID}` with M one of SUBSCRIBE, UNSUBSCRIBE,
LIST_SUBSCRIPTIONS, AUTH, PING (case-insensitive); ID a number, a string or absent.
Replies: `{"id": ID, "result": R}` or `{"id": ID, "error": {"code": C, "message": M}}`.
Data: `{"stream": S, "data": D}`.

Invariants:
- every request that can be read as a JSON object gets exactly one reply carrying its id; a
  parse failure or an unusable id (not an integer nor a string of at most 64 characters)
  gets an error with id `null`;
- error messages name the field at fault and never echo more than a few characters of a
  client's value;
- AUTH params reach the gateway as an `AuthParams` of checked types and sizes (printable
  ASCII key, non-negative integer timestamp, 64 hex characters), so nothing downstream
  (Redis keys, int(), hmac.compare_digest) can raise on them;
- `encode_text_frame` produces one complete, unmasked, final RFC 6455 text frame, so the
  same bytes can be written to every socket (server frames are never masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "AUTH", "PING")
MAX_PARAMS = 100
MAX_ID_CHARS = 64
MAX_API_KEY_CHARS = 128
MAX_TIMESTAMP_DIGITS = 15  # ms since the epoch has 13 digits until the year 2286
SIGNATURE_HEX_CHARS = 64  # hex HMAC-SHA256
_HEX = frozenset("0123456789abcdefABCDEF")


class ProtocolError(ValueError):
    """A request refused before any I/O. `close` is the WebSocket close code to send after
    the error reply (None: the socket stays open)."""

    def __init__(self, code: str, message: str, request_id: object = None,
                 close: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.close = close


@dataclass(frozen=True, slots=True)
class AuthParams:
    api_key: str  # 1..128 printable ASCII characters
    timestamp: int  # ms since the epoch, >= 0
    signature: str  # 64 hex characters


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: Any  # list[str] for (UN)SUBSCRIBE, AuthParams for AUTH, unchecked otherwise
    id: int | str | None


def parse_request(text: str | bytes) -> Request:
    """The request in one client frame, or ProtocolError naming what is wrong. Never echoes
    more than a few characters of a client's value back."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("INVALID_JSON", "message is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("BAD_REQUEST", "message must be a JSON object")
    raw_id = doc.get("id")
    if raw_id is not None and not _usable_id(raw_id):
        raise ProtocolError(
            "BAD_REQUEST", f"id must be an integer or a string of at most {MAX_ID_CHARS} characters"
        )
    request_id: int | str | None = raw_id
    method = doc.get("method")
    if not isinstance(method, str) or method.upper() not in METHODS:
        shown = f"{method[:20]!r}" if isinstance(method, str) else "missing or not a string"
        raise ProtocolError(
            "UNKNOWN_METHOD", f"method {shown} is unknown; use one of {', '.join(METHODS)}",
            request_id,
        )
    method = method.upper()
    params = doc.get("params")
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        if (
            not isinstance(params, list) or not params or len(params) > MAX_PARAMS
            or not all(isinstance(p, str) for p in params)
        ):
            raise ProtocolError(
                "BAD_REQUEST", f"params must be a list of 1 to {MAX_PARAMS} stream names",
                request_id,
            )
    elif method == "AUTH":
        params = parse_auth_params(params, request_id)
    return Request(method, params, request_id)


def _usable_id(raw: object) -> bool:
    if isinstance(raw, bool):
        return False
    return isinstance(raw, int) or (isinstance(raw, str) and len(raw) <= MAX_ID_CHARS)


def parse_auth_params(params: object, request_id: object = None) -> AuthParams:
    """AUTH's params checked field by field; a failure closes the socket (1008)."""
    def bad(message: str) -> ProtocolError:
        return ProtocolError("BAD_REQUEST", message, request_id, close=1008)

    if not isinstance(params, dict):
        raise bad("params must be an object {apiKey, timestamp, signature}")
    for name in ("apiKey", "timestamp", "signature"):
        if name not in params:
            raise bad(f"params.{name} is missing")
    api_key, ts, signature = params["apiKey"], params["timestamp"], params["signature"]
    if not (isinstance(api_key, str) and 0 < len(api_key) <= MAX_API_KEY_CHARS
            and api_key.isascii() and api_key.isprintable()):
        raise bad(f"params.apiKey must be a string of 1 to {MAX_API_KEY_CHARS} printable ASCII characters")
    if isinstance(ts, str) and 0 < len(ts) <= MAX_TIMESTAMP_DIGITS and ts.isascii() and ts.isdigit():
        ts = int(ts)
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise bad("params.timestamp must be ms since the epoch: a non-negative integer or a string of digits")
    if not (isinstance(signature, str) and len(signature) == SIGNATURE_HEX_CHARS
            and all(c in _HEX for c in signature)):
        raise bad(f"params.signature must be {SIGNATURE_HEX_CHARS} hex characters (HMAC-SHA256)")
    return AuthParams(api_key, ts, signature.lower())


def reply(request_id: object, result: object) -> bytes:
    return orjson.dumps({"id": request_id, "result": result})


def error_reply(request_id: object, code: str, message: str) -> bytes:
    return orjson.dumps({"id": request_id, "error": {"code": code, "message": message}})


def data_message(stream: str, data: object) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def encode_text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (opcode 0x1) carrying `payload` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65_536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


class TokenBucket:
    """At most `burst` messages at once, refilled at `rate` per second (clock injected)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
