"""JSON responses and the exceptions route code raises to get a particular error answer.

Invariants: every error body is `{"code", "message"[, "field"]}` with the HTTP status of
its cryptex_common.errors code; a 429 always carries `Retry-After` (whole seconds, >= 1).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from cryptex_common.errors import CryptexError


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=headers)


def error_response(err: CryptexError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(err.to_wire(), err.http_status, headers)


def retry_after(seconds: float) -> dict[str, str]:
    """The `Retry-After` header for a wait of `seconds`: rounded up, at least 1."""
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


class RateLimited(Exception):
    """Answered 429 RATE_LIMITED with `Retry-After` from `retry_after_s`."""

    def __init__(self, retry_after_s: float, message: str = "rate limit exceeded for this API key") -> None:
        self.retry_after_s = retry_after_s
        self.message = message


class GuardChecked(Exception):
    """An order route's error raised after its replay guard was checked (set, or found
    used): `order_route` answers `error` without setting the guard again."""

    def __init__(self, error: CryptexError) -> None:
        self.error = error
