"""The `/ws` control protocol, the inbound rate limit and the outbound frame. Pure, no I/O.

Requests: `{"method": M, "params": P, "id": ID}` with M one of SUBSCRIBE, UNSUBSCRIBE,
LIST_SUBSCRIPTIONS, AUTH, PING (case-insensitive); ID a number, a string or absent.
Replies: `{"id": ID, "result": R}` or `{"id": ID, "error": {"code": C, "message": M}}`.
Data: `{"stream": S, "data": D}`.

Invariants:
- every request that can be read as a JSON object gets exactly one reply carrying its id
  (or `null` when the id is unusable); a parse failure replies with id `null`;
- `encode_text_frame` produces one complete, unmasked, final RFC 6455 text frame, so the
  same bytes can be written to every socket (server frames are never masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "AUTH", "PING")
MAX_PARAMS = 100


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str, request_id: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: Any
    id: int | str | None


def _usable_id(raw: object) -> int | str | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int) or (isinstance(raw, str) and len(raw) <= 64):
        return raw
    return None


def parse_request(text: str | bytes) -> Request:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("INVALID_JSON", "message is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("BAD_REQUEST", "message must be a JSON object")
    request_id = _usable_id(doc.get("id"))
    method = doc.get("method")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ProtocolError(
            "UNKNOWN_METHOD", f"unknown method {method!r}; use one of {', '.join(METHODS)}",
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
    elif method == "AUTH" and not (
        isinstance(params, dict) and all(k in params for k in ("apiKey", "timestamp", "signature"))
    ):
        raise ProtocolError(
            "BAD_REQUEST", "params must be {apiKey, timestamp, signature}", request_id
        )
    return Request(method, params, request_id)


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
