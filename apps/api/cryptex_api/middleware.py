"""Route wrappers (signed, order, public) and the middleware that turns what a handler
raised into its error response, stamps X-Request-Id and counts the request.

Invariants: a handler never answers a bare exception: CryptexError -> its code's status,
RateLimited -> 429 with Retry-After, Redis away or busy -> 503 ENGINE_UNAVAILABLE (nothing
was queued), anything else -> 500 INTERNAL (logged); every response carries X-Request-Id
(the caller's when it is valid, else a fresh one); the metric children are cached per
label values (at most 10 000 each).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from redis.exceptions import RedisError

from cryptex_api import params
from cryptex_api.responses import GuardChecked, RateLimited, error_response, json_response, retry_after
from cryptex_common import metrics
from cryptex_common.errors import CryptexError, ErrorCode

if TYPE_CHECKING:
    from cryptex_api.app import Api

log = logging.getLogger("cryptex.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SignedHandler = Callable[[web.Request, str, dict[str, Any]], Awaitable[web.Response]]


def private(api: Api, handler: SignedHandler, wants_body: bool = True) -> Handler:
    """A signed route: body read, signature and replay guard checked, key rate-limited."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        raw = await api.read_body(request)
        user_id = await api.auth.authenticate(request, raw)
        body = api.read_json(raw) if wants_body else {}
        return await handler(request, user_id, body)
    return wrapped


def order_route(api: Api) -> Handler:
    """POST /order: the replay guard is checked and set by the enqueue script itself, so an
    accepted order costs one Redis round trip. A request refused before that (rate limit,
    bad body, market state) sets the guard here first, as `authenticate` would have: a
    replayed signature is answered REPLAYED_REQUEST whatever else is wrong with it."""
    auth, place_order = api.auth, api.orders.place_order

    async def wrapped(request: web.Request) -> web.StreamResponse:
        raw = await api.read_body(request)
        user_id, signed = await auth.verify_signature(request, raw)
        try:
            auth.take_rate(signed.api_key)
            body = api.read_json(raw)
            return await place_order(request, user_id, body, signed.signature)
        except GuardChecked as checked:
            raise checked.error from None
        except (CryptexError, RateLimited):
            await auth.guard_replay(user_id, signed.signature)
            raise
    return wrapped


def public(api: Api, handler: Handler) -> Handler:
    """An unauthenticated route: limited per client address before any work."""
    auth = api.auth

    async def wrapped(request: web.Request) -> web.StreamResponse:
        auth.limit_address(request, auth.public_ips)
        return await handler(request)
    return wrapped


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or the error response for what it raised."""
    try:
        return await handler(request)
    except CryptexError as err:
        return error_response(err)
    except GuardChecked as checked:
        return error_response(checked.error)
    except RateLimited as rl:
        return error_response(CryptexError(ErrorCode.RATE_LIMITED, rl.message), retry_after(rl.retry_after_s))
    except web.HTTPRequestEntityTooLarge:
        return error_response(CryptexError(ErrorCode.BODY_TOO_LARGE, "request body is too large", "body"))
    except web.HTTPNotFound:
        return error_response(CryptexError(ErrorCode.NOT_FOUND, f"no route {request.rel_url.raw_path[:200]}"))
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        return json_response({"code": "METHOD_NOT_ALLOWED", "message": f"{request.method} not allowed; use {allow}"},
                             405, {"Allow": allow})
    except (RedisError, OSError) as exc:  # Redis away or its pool busy: nothing was queued
        metrics.REDIS_ERRORS.labels(service="api").inc()
        log.warning("redis unavailable", extra={"path": request.path, "error": repr(exc)})
        return error_response(CryptexError(
            ErrorCode.ENGINE_UNAVAILABLE,
            "order store unavailable or busy; retry (with the same clientOrderId to stay idempotent)"),
            retry_after(1))
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(CryptexError(ErrorCode.INTERNAL, "internal error"))


class _CorrelationIds:
    """16 hex digits per request: a random per-process prefix and a counter (unique, and no
    random bytes drawn per request)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._n = itertools.count(secrets.randbelow(2**31))

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._n) & 0xFFFFFFFF:08x}"


_new_correlation_id = _CorrelationIds()
# metric children by label values, resolved once (prometheus_client's labels() is slow)
_http_requests: dict[tuple[str, str, int], Any] = {}
_http_latency: dict[tuple[str, str], Any] = {}


def _count_request(route: str, method: str, status: int, seconds: float) -> None:
    counter = _http_requests.get((route, method, status))
    if counter is None:
        counter = metrics.HTTP_REQUESTS.labels(route=route, method=method, status=str(status))
        if len(_http_requests) < 10_000:
            _http_requests[(route, method, status)] = counter
    counter.inc()
    histogram = _http_latency.get((route, method))
    if histogram is None:
        histogram = metrics.HTTP_LATENCY.labels(route=route, method=method)
        if len(_http_latency) < 10_000:
            _http_latency[(route, method)] = histogram
    histogram.observe(seconds)


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    try:
        request["correlation_id"] = params.request_id(request.headers) or _new_correlation_id()
    except CryptexError as err:
        request["correlation_id"] = _new_correlation_id()
        response: web.StreamResponse = error_response(err)
    else:
        response = await _answer(request, handler)
    response.headers["X-Request-Id"] = request["correlation_id"]
    _count_request(route, request.method, response.status, time.perf_counter() - started)
    return response
