"""Error codes shared by the API, the engine and the WebSocket gateway, with their HTTP status.

A code names the rule that failed; the message names the field. Engine reject reasons use
the same codes so an engine rejection maps to the same HTTP answer as an API one.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    INVALID_JSON = "INVALID_JSON"
    INVALID_FIELD = "INVALID_FIELD"
    MISSING_FIELD = "MISSING_FIELD"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    UNKNOWN_MARKET = "UNKNOWN_MARKET"
    UNAUTHORIZED = "UNAUTHORIZED"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    STALE_TIMESTAMP = "STALE_TIMESTAMP"
    REPLAYED_REQUEST = "REPLAYED_REQUEST"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    ORDER_NOT_OPEN = "ORDER_NOT_OPEN"
    CONFLICT = "CONFLICT"
    OFF_TICK = "OFF_TICK"
    OFF_LOT = "OFF_LOT"
    QUANTITY_TOO_SMALL = "QUANTITY_TOO_SMALL"
    QUANTITY_TOO_LARGE = "QUANTITY_TOO_LARGE"
    NOTIONAL_TOO_SMALL = "NOTIONAL_TOO_SMALL"
    AMOUNT_TOO_LARGE = "AMOUNT_TOO_LARGE"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    POST_ONLY_WOULD_TAKE = "POST_ONLY_WOULD_TAKE"
    NO_LIQUIDITY = "NO_LIQUIDITY"
    MARKET_NOT_OPEN = "MARKET_NOT_OPEN"
    MARKET_HALTED = "MARKET_HALTED"
    ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"
    # the engine could not read the queued command (a newer command version during a
    # rolling upgrade): the order was rejected in sequence and its lock released
    UNSUPPORTED_COMMAND = "UNSUPPORTED_COMMAND"
    HISTORY_UNAVAILABLE = "HISTORY_UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL = "INTERNAL"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.MISSING_FIELD: 400,
    ErrorCode.UNKNOWN_FIELD: 400,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.UNKNOWN_MARKET: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.BAD_SIGNATURE: 401,
    ErrorCode.STALE_TIMESTAMP: 401,
    ErrorCode.REPLAYED_REQUEST: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ORDER_NOT_FOUND: 404,
    ErrorCode.ORDER_NOT_OPEN: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.OFF_TICK: 422,
    ErrorCode.OFF_LOT: 422,
    ErrorCode.QUANTITY_TOO_SMALL: 422,
    ErrorCode.QUANTITY_TOO_LARGE: 422,
    ErrorCode.NOTIONAL_TOO_SMALL: 422,
    ErrorCode.AMOUNT_TOO_LARGE: 400,
    ErrorCode.INSUFFICIENT_FUNDS: 422,
    ErrorCode.POST_ONLY_WOULD_TAKE: 422,
    ErrorCode.NO_LIQUIDITY: 422,
    ErrorCode.MARKET_NOT_OPEN: 422,
    ErrorCode.MARKET_HALTED: 503,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED_COMMAND: 503,
    ErrorCode.HISTORY_UNAVAILABLE: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
}


class CryptexError(Exception):
    """A rule violation with a code and a message that names the field and the rule."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_wire(self) -> dict[str, str]:
        # a message may quote input: lone surrogates (undecodable bytes) become "?" so the
        # error itself always encodes
        message = self.message.encode("utf-8", "replace").decode("utf-8")
        body = {"code": self.code.value, "message": message}
        if self.field:
            body["field"] = self.field
        return body
