"""Binance error answers: `{"code": -NNNN, "msg": ...}` with the codes and message texts
real clients map (ccxt matches the message text before the code, so texts are Binance's
own, word for word), and the translation of a native CryptexError into one.

Statuses follow Binance: 400 for request and rule errors, 401 for an unknown API key
(-2015), 429 for the weight limit (-1003), 5xx when the outcome is unknown (-1000, -1001,
-1007).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from cryptex_common.errors import CryptexError, ErrorCode

DECIMAL_RULE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
INSUFFICIENT_BALANCE = "Account has insufficient balance for requested action."
WOULD_TAKE = "Order would immediately match and take."
UNKNOWN_ORDER = "Unknown order sent."
NO_SUCH_ORDER = "Order does not exist."
BAD_SIGNATURE = "Signature for this request is not valid."
BAD_KEY = "Invalid API-key, IP, or permissions for action."
MARKET_CLOSED = "Market is closed."
TIMEOUT = "Timeout waiting for response from backend server. Send status unknown; execution status unknown."


class BinanceError(Exception):
    """Answered as `{"code": code, "msg": msg}` with `status`."""

    def __init__(self, code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers

    def response(self) -> web.Response:
        return web.Response(body=orjson.dumps({"code": self.code, "msg": self.msg}), status=self.status,
                            content_type="application/json", headers=self.headers)


def mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def illegal(name: str, rule: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{rule}'.")


def not_valid(name: str) -> BinanceError:
    return BinanceError(-1130, f"Data sent for parameter '{name}' is not valid.")


def not_required(name: str) -> BinanceError:
    return BinanceError(-1106, f"Parameter '{name}' sent when not required.")


def invalid_symbol() -> BinanceError:
    return BinanceError(-1121, "Invalid symbol.")


def filter_failure(name: str) -> BinanceError:
    return BinanceError(-1013, f"Filter failure: {name}")


def rate_limited(limit: int, retry_after_s: int) -> BinanceError:
    return BinanceError(-1003, f"Too much request weight used; current limit is {limit} request weight per 1 "
                               "MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
                        429, {"Retry-After": str(retry_after_s)})


# native field -> the Binance parameter a client sent
_PARAM_NAMES = {"quoteQuantity": "quoteOrderQty", "clientOrderId": "newClientOrderId", "kind": "side",
                "postOnly": "type", "selfTradePrevention": "selfTradePreventionMode", "market": "symbol"}
_SIMPLE: dict[ErrorCode, tuple[int, str, int]] = {
    ErrorCode.UNKNOWN_MARKET: (-1121, "Invalid symbol.", 400),
    ErrorCode.INSUFFICIENT_FUNDS: (-2010, INSUFFICIENT_BALANCE, 400),
    ErrorCode.POST_ONLY_WOULD_TAKE: (-2010, WOULD_TAKE, 400),
    ErrorCode.NO_LIQUIDITY: (-1112, "No orders on book for symbol.", 400),
    ErrorCode.MARKET_HALTED: (-1013, MARKET_CLOSED, 400),
    ErrorCode.STALE_TIMESTAMP: (-1021, "Timestamp for this request is outside of the recvWindow.", 400),
    ErrorCode.BAD_SIGNATURE: (-1022, BAD_SIGNATURE, 400),
    ErrorCode.REPLAYED_REQUEST: (-1022, "Signature for this request was already used.", 400),
    ErrorCode.UNAUTHORIZED: (-2015, BAD_KEY, 401),
    ErrorCode.FORBIDDEN: (-2015, BAD_KEY, 401),
    ErrorCode.ENGINE_UNAVAILABLE: (-1001, "Internal error; unable to process your request. Please try again.", 503),
    ErrorCode.UNSUPPORTED_COMMAND: (-1001, "Internal error; unable to process your request. Please try again.", 503),
    ErrorCode.HISTORY_UNAVAILABLE: (-1001, "Internal error; unable to process your request. Please try again.", 503),
    ErrorCode.INTERNAL: (-1000, "An unknown error occurred while processing the request.", 500),
    ErrorCode.BODY_TOO_LARGE: (-1101, "Too many parameters; the request is too large.", 400),
    ErrorCode.REQUEST_TIMEOUT: (-1007, TIMEOUT, 408),
    ErrorCode.INVALID_JSON: (-1100, "Illegal characters found in the request.", 400),
}


def from_native(err: CryptexError, *, cancelling: bool = False, market_order: bool = False) -> BinanceError:
    """The Binance error for a native one. `cancelling`: unknown or closed orders are
    -2011 (a cancel) rather than -2013 (a lookup); `market_order`: a quantity outside the
    grid fails MARKET_LOT_SIZE rather than LOT_SIZE."""
    code = err.code
    simple = _SIMPLE.get(code)
    if simple is not None:
        return BinanceError(*simple)
    field = _PARAM_NAMES.get(err.field or "", err.field or "")
    if code in (ErrorCode.ORDER_NOT_FOUND, ErrorCode.ORDER_NOT_OPEN):
        return BinanceError(-2011, UNKNOWN_ORDER) if cancelling else BinanceError(-2013, NO_SUCH_ORDER)
    if code == ErrorCode.OFF_TICK or (code == ErrorCode.AMOUNT_TOO_LARGE and field == "price"):
        return filter_failure("PRICE_FILTER")
    if code in (ErrorCode.OFF_LOT, ErrorCode.QUANTITY_TOO_SMALL, ErrorCode.QUANTITY_TOO_LARGE):
        return filter_failure("MARKET_LOT_SIZE" if market_order else "LOT_SIZE")
    if code in (ErrorCode.NOTIONAL_TOO_SMALL, ErrorCode.AMOUNT_TOO_LARGE):
        return filter_failure("NOTIONAL")
    if code == ErrorCode.MARKET_NOT_OPEN:
        return BinanceError(-2010, "This order type is not possible in this trading phase."
                            if "postOnly" in err.message else MARKET_CLOSED)
    if code == ErrorCode.MISSING_FIELD and field:
        return mandatory(field)
    if code in (ErrorCode.INVALID_FIELD, ErrorCode.UNKNOWN_FIELD, ErrorCode.MISSING_FIELD) and field:
        return not_valid(field)
    if code == ErrorCode.RATE_LIMITED:
        return BinanceError(-1015, "Too many new orders.", 429)
    return BinanceError(-2010, err.message)  # CONFLICT and engine rejections without a closer match


def error_body(err: BinanceError) -> dict[str, Any]:
    return {"code": err.code, "msg": err.msg}
