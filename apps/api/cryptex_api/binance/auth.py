"""Binance request parameters, signing and request weight.

Parameters come from the query string and, for POST, PUT and DELETE, from a form body
(`application/x-www-form-urlencoded`): ccxt and python-binance send signed POSTs in the
body, binance-connector sends everything in the query string; both are accepted, and a
parameter given twice is refused (-1101).

Signed requests (Binance's HMAC rule): `signature` = hex HMAC-SHA256(secret, totalParams),
where totalParams is the raw query string followed by the raw body, the `signature`
parameter itself left out; the key comes in `X-MBX-APIKEY` (the same keys as the native
API, through the same cached lookup); `timestamp` must satisfy
`timestamp < now + 1000` and `now - timestamp <= recvWindow` (default 5000, at most
60000). A signature is refused when reused only on requests that change state, through
the native replay guard's Redis keys (`keys.signature_key`), kept for recvWindow + 1 s.

Weight: every route costs Binance's weight, summed per client address over the current
UTC minute (in process, like the native rate limits); each answer carries
`X-MBX-USED-WEIGHT-1M`, and a request that would go over the limit is answered 429
(-1003) with `Retry-After`.
"""

from __future__ import annotations

import hmac
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from aiohttp import web

from cryptex_api import params as native_params
from cryptex_api.binance.errors import BinanceError, illegal, mandatory, rate_limited
from cryptex_common import keys
from cryptex_common.auth import REPLAY_GUARD_MS
from cryptex_common.errors import CryptexError

if TYPE_CHECKING:
    from cryptex_api.app import Api

MAX_RECV_WINDOW_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5_000
AHEAD_MS = 1_000  # Binance refuses a timestamp more than this ahead of the server
_SIG_PARAM = re.compile(rb"(?:^|&)signature=[^&]*")


@dataclass(frozen=True, slots=True)
class Signed:
    user_id: str
    params: dict[str, str]
    signature: str
    recv_window_ms: int


def raw_parts(request: web.Request, body: bytes) -> tuple[bytes, bytes]:
    """The raw (still percent-encoded) query string and the form body."""
    query = request.raw_path.partition("?")[2].encode()
    if body and request.method != "GET" and request.content_type not in ("", "application/x-www-form-urlencoded"):
        raise BinanceError(-1100, "Illegal characters found in the request body: expected a form "
                                  "(application/x-www-form-urlencoded).")
    return query, body


def _pairs(text: str) -> list[tuple[str, str]]:
    """`a=1&b=2` as pairs, percent- and plus-decoded only where needed (parse_qsl's result,
    without its cost on the order path)."""
    out = []
    for item in text.split("&"):
        if item:
            name, _, value = item.partition("=")
            if "%" in item or "+" in item:
                name, value = unquote_plus(name), unquote_plus(value)
            out.append((name, value))
    return out


def parse_params(query: bytes, body: bytes) -> dict[str, str]:
    """Query and body parameters in one dict; a name given twice is refused (-1101)."""
    out: dict[str, str] = {}
    for part in (query, body):
        if not part:
            continue
        try:
            pairs = _pairs(part.decode("ascii"))
        except UnicodeDecodeError:
            raise BinanceError(-1100, "Illegal characters found in the request.") from None
        for name, value in pairs:
            if name in out:
                raise BinanceError(-1101, "Duplicate values for a parameter detected.")
            out[name] = value
    return out


def signed_payload(query: bytes, body: bytes) -> bytes:
    """totalParams without the signature parameter: query string then body."""
    return _SIG_PARAM.sub(b"", query, count=1).lstrip(b"&") + _SIG_PARAM.sub(b"", body, count=1).lstrip(b"&")


def recv_window(params: dict[str, str]) -> int:
    raw = params.get("recvWindow")
    if raw is None:
        return DEFAULT_RECV_WINDOW_MS
    if not native_params.TIMESTAMP_MS.fullmatch(raw):
        raise illegal("recvWindow", "^[0-9]{1,15}$")
    if int(raw) > MAX_RECV_WINDOW_MS:
        raise BinanceError(-1131, "recvWindow must be less than 60000")
    return int(raw)


def check_timestamp(params: dict[str, str], window_ms: int) -> None:
    raw = params.get("timestamp")
    if not raw:
        raise mandatory("timestamp")
    if not native_params.TIMESTAMP_MS.fullmatch(raw):
        raise illegal("timestamp", "^[0-9]{1,15}$")
    now = int(time.time() * 1000)
    ts = int(raw)
    if ts >= now + AHEAD_MS:
        raise BinanceError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
    if now - ts > window_ms:
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")


def api_key(request: web.Request) -> str:
    key = request.headers.get("X-MBX-APIKEY")
    if not key or not native_params.API_KEY.fullmatch(key):
        raise BinanceError(-2014, "API-key format invalid.", 401)
    return key


async def key_owner(api: Api, request: web.Request, key: str) -> tuple[str, bytes]:
    """(user id, secret) of an API key, through the native cached lookup; -2015 when unknown."""
    cached = api.auth.api_keys.get(key)
    if cached is None or cached[2] < time.monotonic():
        try:
            cached = await api.auth.lookup_key(request, key)
        except CryptexError:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401) from None
    return cached[0], cached[1]


async def verify(api: Api, request: web.Request, body: bytes) -> Signed:
    """A signed request's user and parameters (signature, key, timestamp checked, the key's
    rate limit taken). The replay guard is the caller's: `guard` or the enqueue script."""
    key = api_key(request)
    query, form = raw_parts(request, body)
    params = parse_params(query, form)
    signature = params.pop("signature", None)
    if not signature:
        raise mandatory("signature")
    window = recv_window(params)
    check_timestamp(params, window)
    user_id, secret = await key_owner(api, request, key)
    if not native_params.SIGNATURE.fullmatch(signature) or not hmac.compare_digest(
            hmac.digest(secret, signed_payload(query, form), "sha256").hex(), signature.lower()):
        raise BinanceError(-1022, "Signature for this request is not valid.")
    api.auth.take_rate(key)
    return Signed(user_id, params, signature.lower(), window)


def guard_ms(signed: Signed) -> int:
    """How long a signature must be remembered: as long as its timestamp can pass."""
    return signed.recv_window_ms + AHEAD_MS + 1_000


def script_guard_covers(signed: Signed) -> bool:
    """True when the enqueue script's own guard (REPLAY_GUARD_MS) is long enough."""
    return guard_ms(signed) <= REPLAY_GUARD_MS


async def guard(api: Api, signed: Signed) -> None:
    """Remember the signature (the native guard's key); -1022 when it was already used."""
    guard_key = keys.signature_key(signed.user_id, signed.signature)
    fresh = await api.command("SET", guard_key, 1, "NX", "PX", guard_ms(signed))
    if not fresh:
        raise BinanceError(-1022, "Signature for this request was already used.")


class Weights:
    """Request weight per client address over the current UTC minute."""

    def __init__(self, limit: int, max_addresses: int = 100_000) -> None:
        self.limit = limit
        self.max_addresses = max_addresses
        self._minute = 0
        self._used: dict[str, int] = {}

    def take(self, address: str, weight: int) -> int:
        """Add `weight`; the weight used this minute, or -1003 (429) when over the limit."""
        now = time.time()
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._used = minute, {}
        used = self._used.get(address, 0) + weight
        if used > self.limit:
            raise rate_limited(self.limit, max(1, int(60 - now % 60 + 0.999)))
        if len(self._used) < self.max_addresses or address in self._used:
            self._used[address] = used
        return used

    def used(self, address: str) -> int:
        """The weight `address` has used this minute."""
        return self._used.get(address, 0) if int(time.time() // 60) == self._minute else 0
