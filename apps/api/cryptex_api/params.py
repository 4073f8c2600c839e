"""Header and query-parameter parsing: pure functions, no I/O.

Every value is matched as a whole string (`re.fullmatch`) against an ASCII-only pattern
with a length bound before anything converts it, so a non-UTF-8 or non-ASCII byte, a
superscript digit (`"²".isdigit()` is True), a trailing newline or 5,000 digits is a 4xx
naming the header or parameter, never a 500. aiohttp hands header bytes that are not UTF-8
over as lone surrogates; the ASCII patterns refuse them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptex_common.errors import CryptexError, ErrorCode

API_KEY = re.compile(r"[0-9A-Za-z_\-]{1,128}")
TIMESTAMP_MS = re.compile(r"[0-9]{1,15}")
SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")
BEARER = re.compile(r"Bearer ([\x21-\x7e]{1,512})")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
ORDER_ID = re.compile(r"[0-9]{1,18}")
SMALL_UINT = re.compile(r"[0-9]{1,9}")
MARKET = re.compile(r"[A-Za-z0-9_/\-]{1,32}")


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    api_key: str
    ts_text: str
    ts_ms: int
    signature: str


def signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """X-CX-KEY, X-CX-TS, X-CX-SIGN, each well formed (401 naming the header otherwise)."""
    for name in ("X-CX-KEY", "X-CX-TS", "X-CX-SIGN"):
        if not headers.get(name):
            raise CryptexError(ErrorCode.UNAUTHORIZED,
                               "X-CX-KEY, X-CX-TS and X-CX-SIGN headers are required", name)
    api_key, ts_text, signature = headers["X-CX-KEY"], headers["X-CX-TS"], headers["X-CX-SIGN"]
    if not API_KEY.fullmatch(api_key):
        raise CryptexError(ErrorCode.UNAUTHORIZED,
                           "X-CX-KEY must be 1-128 letters, digits, _ or -", "X-CX-KEY")
    if not TIMESTAMP_MS.fullmatch(ts_text):
        raise CryptexError(ErrorCode.STALE_TIMESTAMP,
                           "X-CX-TS must be milliseconds since the epoch (1-15 digits)", "X-CX-TS")
    if not SIGNATURE.fullmatch(signature):
        raise CryptexError(ErrorCode.BAD_SIGNATURE,
                           "X-CX-SIGN must be 64 hex digits (HMAC-SHA256)", "X-CX-SIGN")
    return SignedHeaders(api_key, ts_text, int(ts_text), signature)


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of `Authorization: Bearer <token>` (401 naming the header otherwise)."""
    match = BEARER.fullmatch(headers.get("Authorization", ""))
    if match is None:
        raise CryptexError(ErrorCode.UNAUTHORIZED, "admin bearer token required", "Authorization")
    return match.group(1)


def request_id(headers: Mapping[str, str]) -> str | None:
    """The caller's X-Request-Id, None when absent; 400 naming it when malformed."""
    raw = headers.get("X-Request-Id")
    if raw is None:
        return None
    if not REQUEST_ID.fullmatch(raw):
        raise CryptexError(ErrorCode.INVALID_FIELD,
                           "X-Request-Id must be 1-128 letters, digits, . _ : or -", "X-Request-Id")
    return raw


def int_param(query: Mapping[str, str], field: str, default: int, lo: int, hi: int) -> int:
    """An optional integer query parameter within [lo, hi]."""
    raw = query.get(field)
    if raw is None or raw == "":
        return default
    if not SMALL_UINT.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be an integer in [{lo}, {hi}]", field)
    return int(raw)


def market_text(raw: object) -> str | None:
    """A market name as given (`sol/usdc`, `SOL_USDC`), None when absent or blank; 400 when
    it is not a short string of letters, digits, / _ or -."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str) or not MARKET.fullmatch(raw.strip()):
        raise CryptexError(ErrorCode.UNKNOWN_MARKET, "market must be a market name like SOL/USDC",
                           "market")
    return raw.strip()


@dataclass(frozen=True, slots=True)
class OrderRef:
    order_id: int | None
    client_order_id: str | None


def order_ref(params: Mapping[str, object], client_order_id: re.Pattern[str]) -> OrderRef:
    """`orderId` (digits, as a string or a JSON integer) or `clientOrderId`."""
    raw_id, coid = params.get("orderId"), params.get("clientOrderId")
    if raw_id is None and coid is None:
        raise CryptexError(ErrorCode.MISSING_FIELD, "orderId or clientOrderId is required", "orderId")
    order_id = None
    if raw_id is not None:
        text = str(raw_id) if isinstance(raw_id, int) and not isinstance(raw_id, bool) else raw_id
        if not isinstance(text, str) or not ORDER_ID.fullmatch(text) or int(text) == 0:
            raise CryptexError(ErrorCode.INVALID_FIELD, "orderId must be a positive integer", "orderId")
        order_id = int(text)
    if coid is not None and (not isinstance(coid, str) or not client_order_id.fullmatch(coid)):
        raise CryptexError(ErrorCode.INVALID_FIELD,
                           "clientOrderId must be 1-36 characters of letters, digits, _ - : .",
                           "clientOrderId")
    return OrderRef(order_id, coid)
