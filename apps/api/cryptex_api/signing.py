"""Who is calling: signed requests (HMAC over ts + method + path + body), the replay
guard, per-key and per-address rate limits, and the admin bearer token.

Invariants: a request is attributed to a user only after its signature matched the
secret stored for its key; a cached key is trusted for at most API_KEY_CACHE_TTL_S and
the cache never holds more than API_KEY_CACHE_MAX keys; a signature is accepted at most
once within REPLAY_GUARD_MS; unknown keys count against the caller's address, so random
keys cannot keep the order pool busy. A cached key costs no Redis call to verify.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from cryptex_api import params
from cryptex_api.ratelimit import TokenBuckets
from cryptex_api.responses import RateLimited
from cryptex_api.settings import ApiSettings
from cryptex_common import auth, keys
from cryptex_common.auth import REPLAY_GUARD_MS
from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.resp import as_text

API_KEY_CACHE_TTL_S = 60.0  # a key deleted or re-pointed in Redis stops working within this
API_KEY_CACHE_MAX = 100_000


class Authenticator:
    """The API key cache and the rate-limit buckets; one per process (owned by `Api`).
    `command` runs one Redis command on the order path (`Api.command`)."""

    def __init__(self, settings: ApiSettings, redis: Redis,
                 command: Callable[..., Awaitable[Any]]) -> None:
        self.settings = settings
        self.redis = redis
        self.command = command
        # apiKey -> (userId, secret, cached until (monotonic s)): bounded, short-lived
        self.api_keys: dict[str, tuple[str, bytes, float]] = {}
        self.buckets = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.public_ips = TokenBuckets(settings.public_rate_limit_per_s, settings.public_rate_limit_burst)
        self.admin_ips = TokenBuckets(settings.admin_rate_limit_per_s, settings.admin_rate_limit_burst)
        self.key_misses = TokenBuckets(settings.public_rate_limit_per_s, settings.public_rate_limit_burst)

    def limit_address(self, request: web.Request, buckets: TokenBuckets) -> None:
        """Per client address limit for unauthenticated and admin routes (429)."""
        wait_s = buckets.take(request.remote or "unknown")
        if wait_s > 0:
            raise RateLimited(wait_s, "rate limit exceeded for this client address")

    async def authenticate(self, request: web.Request, body: bytes) -> str:
        """The signed request's user: signature checked, replay guard set, rate limited."""
        user_id, signed = await self.verify_signature(request, body)
        await self.guard_replay(user_id, signed.signature)
        self.take_rate(signed.api_key)
        return user_id

    async def verify_signature(self, request: web.Request, body: bytes) -> tuple[str, params.SignedHeaders]:
        """The user whose key signed this request (401 otherwise); no Redis call when the
        key is cached. The replay guard and the rate limit are the caller's next steps."""
        signed = params.signed_headers(request.headers)
        if not auth.timestamp_fresh(signed.ts_ms, int(time.time() * 1000)):
            raise CryptexError(ErrorCode.STALE_TIMESTAMP, "X-CX-TS is outside the 5 s window", "X-CX-TS")
        cached = self.api_keys.get(signed.api_key)
        if cached is None or cached[2] < time.monotonic():
            cached = await self.lookup_key(request, signed.api_key)
        user_id, secret, _ = cached
        payload = b"%s%s%s%s" % (signed.ts_text.encode(), request.method.encode(), request.raw_path.encode(), body)
        if not hmac.compare_digest(hmac.digest(secret, payload, "sha256").hex(), signed.signature):
            raise CryptexError(ErrorCode.BAD_SIGNATURE, "X-CX-SIGN does not match the request", "X-CX-SIGN")
        return user_id, signed

    async def guard_replay(self, user_id: str, signature: str) -> None:
        """Remember the signature for REPLAY_GUARD_MS; 401 REPLAYED_REQUEST if it was used."""
        fresh = await self.command("SET", keys.signature_key(user_id, signature), 1, "NX", "PX", REPLAY_GUARD_MS)
        if not fresh:
            raise CryptexError(ErrorCode.REPLAYED_REQUEST, "this signed request was already used", "X-CX-SIGN")

    def take_rate(self, api_key: str) -> None:
        """One token from the key's bucket; 429 when it is empty."""
        wait_s = self.buckets.take(api_key)
        if wait_s > 0:
            raise RateLimited(wait_s)

    async def lookup_key(self, request: web.Request, api_key: str) -> tuple[str, bytes, float]:
        """An API key not yet cached. Unknown keys count against the caller's address
        (`key_misses`, the public rate): an address past it is answered 429 without a
        lookup, so random keys cannot keep the order pool busy."""
        address = request.remote or "unknown"
        wait_s = self.key_misses.waiting(address)
        if wait_s > 0:
            raise RateLimited(wait_s, "too many unknown API keys from this client address")
        user_id = await self.redis.get(keys.api_key_key(api_key))
        secret = await self.redis.hget(keys.user_key(as_text(user_id)), "apiSecret") if user_id else None
        if not user_id or not secret:
            self.key_misses.take(address)
            raise CryptexError(ErrorCode.UNAUTHORIZED, "unknown API key", "X-CX-KEY")
        user = (as_text(user_id), as_text(secret).encode(), time.monotonic() + API_KEY_CACHE_TTL_S)
        if len(self.api_keys) >= API_KEY_CACHE_MAX:
            self.api_keys.clear()
        self.api_keys[api_key] = user
        return user

    def check_admin(self, request: web.Request) -> None:
        """Admin routes: address-limited, then the bearer token compared in constant time;
        403 when no admin token is configured."""
        self.limit_address(request, self.admin_ips)
        token = self.settings.admin_token
        if not token:
            raise CryptexError(ErrorCode.FORBIDDEN, "admin routes are disabled (CRYPTEX_ADMIN_TOKEN unset)")
        given = params.bearer_token(request.headers)
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise CryptexError(ErrorCode.UNAUTHORIZED, "admin bearer token required", "Authorization")
