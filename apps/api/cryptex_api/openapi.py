"""The OpenAPI 3.1 document served at /api/v1/openapi.json (kept by hand, checked by a
test against the routes the app really registers)."""

from __future__ import annotations

from typing import Any

_DEC = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "maxLength": 64, "description": "decimal string"}
_NUM = {"oneOf": [_DEC, {"type": "number", "minimum": 0}], "description": "JSON number or decimal string"}
_DEC_OUT = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
_NULLABLE_DEC = {"oneOf": [_DEC_OUT, {"type": "null"}]}
_ERR = {"$ref": "#/components/schemas/Error"}
_SIGNED: list[dict[str, list[str]]] = [{"cxKey": [], "cxTs": [], "cxSign": []}]
_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string",
                                                                             "pattern": "^[0-9]+$"}}}
_WHY = {
    400: "bad input (the field is named), including a malformed X-Request-Id",
    401: "missing, malformed, stale, replayed or wrong credentials",
    403: "admin routes disabled (no admin token configured)",
    404: "not found", 408: "request body not received in time", 409: "conflict",
    413: "request body too large", 422: "rule violation (funds, grid, limits, market state)",
    429: "rate limited (per API key, or per client address on public and admin routes)",
    503: "market halted, engine/order store unavailable or busy, or history unavailable",
}
# Statuses every route of a kind can answer, besides its own.
PUBLIC = (400, 429, 503)
SIGNED = (400, 401, 408, 413, 429, 503)
ADMIN = (400, 401, 403, 408, 413, 429, 503)


def _q(name: str, required: bool = False, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema or {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(desc: str, schema: dict[str, Any] | None, *codes: int, ok: int = 200) -> dict[str, Any]:
    """`ok` with its body schema, then each error status with the Error schema."""
    body = {"content": {"application/json": {"schema": schema}}} if schema else {}
    out: dict[str, Any] = {str(ok): {"description": desc, **body}}
    for c in sorted(set(codes)):
        out[str(c)] = {"description": _WHY[c], "content": {"application/json": {"schema": _ERR}}}
        if c in (429, 503):
            out[str(c)]["headers"] = _RETRY_AFTER
    return out


def _array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


_ORDER = {"type": "object", "required": ["orderId", "market", "side", "type", "status"], "properties": {
    "orderId": {"type": "string"}, "clientOrderId": {"type": ["string", "null"]},
    "market": {"type": "string"}, "side": {"enum": ["buy", "sell"]}, "type": {"enum": ["limit", "market"]},
    "timeInForce": {"enum": ["GTC", "IOC", "FOK"]}, "postOnly": {"type": "boolean"},
    "price": _NULLABLE_DEC, "quantity": _NULLABLE_DEC, "quoteQuantity": _NULLABLE_DEC,
    "executedQty": _NULLABLE_DEC, "executedQuoteQty": _NULLABLE_DEC, "status": {"type": "string"},
    "reason": {"type": ["string", "null"]}, "createdAt": {"type": "integer"}, "updatedAt": {"type": "integer"}}}
_FILL = {"type": "object", "required": ["tradeId", "orderId", "price", "quantity"], "properties": {
    "tradeId": {"type": "string"}, "orderId": {"type": "string"}, "market": {"type": "string"},
    "side": {"enum": ["buy", "sell"]}, "price": _DEC_OUT, "quantity": _DEC_OUT, "quoteQuantity": _DEC_OUT,
    "fee": _DEC_OUT, "feeAsset": {"type": "string"}, "liquidity": {"enum": ["maker", "taker"]},
    "ts": {"type": "integer"}}}
_ORDER_RESULT = {"type": "object", "properties": {
    "order": _ref("Order"), "fills": _array(_ref("Fill")), "duplicate": {"type": "boolean"},
    "orderId": {"type": "string"}, "status": {"type": "string"}, "message": {"type": "string"},
    "cancelled": _array(_ref("Order")), "pendingMarkets": _array({"type": "string"})}}
_LEVELS = _array({"type": "array", "items": {"type": ["string", "null"]}, "minItems": 2, "maxItems": 2})
_DEPTH = {"type": "object", "required": ["market", "lastUpdateId", "bids", "asks"], "properties": {
    "market": {"type": "string"}, "lastUpdateId": {"type": "integer"}, "bids": _LEVELS, "asks": _LEVELS}}
_BALANCE = {"type": "object", "required": ["asset", "available", "locked"], "properties": {
    "asset": {"type": "string"}, "available": _DEC_OUT, "locked": _DEC_OUT}}
_TRANSFER_RESULT = {"type": "object", "required": ["duplicate"], "properties": {
    "duplicate": {"type": "boolean"}, "userId": {}, "asset": {"type": "string"}, "txId": {}, "amount": {}}}
_NEW_USER = {"type": "object", "required": ["userId", "apiKey", "apiSecret"], "properties": {
    "userId": {"type": "string"}, "apiKey": {"type": "string"}, "apiSecret": {"type": "string"}}}
_TICKER = {"type": "object", "required": ["market"], "properties": {"market": {"type": "string"}}}
_OBJECT = {"type": "object"}

_MARKET = _q("market", True)
_LIMIT = _q("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000})
_MS = {"type": "integer", "minimum": 0}
_ORDER_REF = [_q("orderId", schema={"type": "string", "pattern": "^[0-9]{1,18}$"}),
              _q("clientOrderId", schema={"type": "string", "pattern": "^[A-Za-z0-9_:.-]{1,36}$"})]
_HISTORY = [_q("market"), _q("startTime", schema=_MS), _q("endTime", schema=_MS),
            _q("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000})]
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Cryptex REST API", "version": "1.0.0",
             "description": "Amounts are decimal strings; times are integer milliseconds. "
                            "Private routes are signed: X-CX-SIGN = hex HMAC-SHA256(secret, "
                            "X-CX-TS + METHOD + path-with-query + body)."},
    "servers": [{"url": "/api/v1"}],
    "components": {
        "securitySchemes": {
            "cxKey": {"type": "apiKey", "in": "header", "name": "X-CX-KEY"},
            "cxTs": {"type": "apiKey", "in": "header", "name": "X-CX-TS"},
            "cxSign": {"type": "apiKey", "in": "header", "name": "X-CX-SIGN"},
            "admin": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "Error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"},
                "field": {"type": "string"}}},
            "Order": _ORDER, "Fill": _FILL, "OrderResult": _ORDER_RESULT,
            "NewOrder": {"type": "object", "required": ["market", "type"], "additionalProperties": False,
                         "properties": {
                             "market": {"type": "string", "examples": ["sol/usdc", "SOL_USDC"]},
                             "kind": {"enum": ["buy", "sell"]}, "side": {"enum": ["buy", "sell"]},
                             "type": {"enum": ["limit", "market"]}, "price": _NUM, "quantity": _NUM,
                             "quoteQuantity": _NUM, "timeInForce": {"enum": ["GTC", "IOC", "FOK"]},
                             "postOnly": {"type": "boolean"},
                             "clientOrderId": {"type": "string", "pattern": "^[A-Za-z0-9_:.-]{1,36}$"},
                             "selfTradePrevention": {"enum": ["expire_maker", "expire_taker",
                                                              "expire_both", "none"]}}},
            "Transfer": {"type": "object", "required": ["userId", "asset", "amount", "txId"],
                         "additionalProperties": False,
                         "properties": {"userId": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                                        "asset": {"type": "string", "pattern": "^[A-Za-z0-9]{1,10}$"},
                                        "amount": _NUM,
                                        "txId": {"type": "string", "pattern": "^[!-~]{1,128}$"}}},
        },
    },
    "paths": {
        "/order": {
            "post": {"summary": "Place an order", "security": _SIGNED,
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": _ref("NewOrder"),
                         "example": {"kind": "buy", "type": "limit", "price": 12000,
                                     "quantity": 20, "market": "sol/usdc"}}}},
                     "responses": {**_resp("order result with fills", _ref("OrderResult"), *SIGNED, 409, 422),
                                   "202": {"description": "queued; engine reply not yet received",
                                           "content": {"application/json": {"schema": _ref("OrderResult")}}}}},
            "delete": {"summary": "Cancel an order", "security": _SIGNED, "parameters": _ORDER_REF,
                       "responses": {**_resp("cancelled order", _ref("OrderResult"), *SIGNED, 404, 409),
                                     "202": {"description": "cancel queued; engine reply not yet received",
                                             "content": {"application/json": {"schema": _ref("OrderResult")}}}}},
            "get": {"summary": "Get an order", "security": _SIGNED, "parameters": _ORDER_REF,
                    "responses": _resp("order", _ref("Order"), *SIGNED, 404)},
        },
        "/orders": {"delete": {"summary": "Cancel all open orders (of a market)", "security": _SIGNED,
                               "parameters": [_q("market")],
                               "responses": {**_resp("cancelled", _ref("OrderResult"), *SIGNED),
                                             "202": {"description": "some markets did not answer in time",
                                                     "content": {"application/json": {
                                                         "schema": _ref("OrderResult")}}}}}},
        "/orders/open": {"get": {"summary": "Open orders", "security": _SIGNED, "parameters": [_q("market")],
                                 "responses": _resp("orders", _array(_ref("Order")), *SIGNED)}},
        "/orders/history": {"get": {"summary": "Order history (PostgreSQL)", "security": _SIGNED,
                                    "parameters": [*_HISTORY, _q("beforeOrderId", schema=_MS)],
                                    "responses": _resp("orders", _array(_ref("Order")), *SIGNED)}},
        "/fills": {"get": {"summary": "Your fills (PostgreSQL)", "security": _SIGNED,
                           "parameters": [*_HISTORY, _q("fromId", schema=_MS)],
                           "responses": _resp("fills", _array(_ref("Fill")), *SIGNED)}},
        "/balances": {"get": {"summary": "Balances", "security": _SIGNED,
                              "responses": _resp("balances", _array(_BALANCE), *SIGNED)}},
        "/markets": {"get": {"summary": "Markets and their rules",
                             "responses": _resp("markets", _array(_OBJECT), *PUBLIC)}},
        "/depth": {"get": {"summary": "Order book with lastUpdateId",
                           "parameters": [_MARKET, _q("limit", schema={"type": "integer", "minimum": 1,
                                                                       "maximum": 200})],
                           "responses": _resp("book", _DEPTH, *PUBLIC)}},
        "/trades": {"get": {"summary": "Recent trades (older pages with beforeId, from PostgreSQL)",
                            "parameters": [_MARKET, _LIMIT, _q("beforeId", schema=_MS)],
                            "responses": _resp("trades", _array(_OBJECT), *PUBLIC)}},
        "/ticker": {"get": {"summary": "24 h ticker", "parameters": [_MARKET],
                            "responses": _resp("ticker", _TICKER, *PUBLIC)}},
        "/tickers": {"get": {"summary": "All 24 h tickers", "responses": _resp("tickers", _array(_TICKER), *PUBLIC)}},
        "/klines": {"get": {"summary": "Candles, Binance row order",
                            "parameters": [_MARKET, _q("interval", True, {"enum": ["1m", "5m", "15m", "1h", "4h",
                                                                                   "1d", "1w"]}),
                                           _q("startTime", schema=_MS), _q("endTime", schema=_MS), _LIMIT],
                            "responses": _resp("rows [openTime, o, h, l, c, volume, closeTime, "
                                               "quoteVolume, count]", _array(_array({})), *PUBLIC)}},
        "/time": {"get": {"summary": "Server time", "responses": _resp(
            "serverTime", {"type": "object", "required": ["serverTime"],
                           "properties": {"serverTime": {"type": "integer"}}}, *PUBLIC)}},
        "/openapi.json": {"get": {"summary": "This document", "responses": _resp("OpenAPI 3.1", _OBJECT, *PUBLIC)}},
        "/admin/users": {"post": {"summary": "Create a user", "security": _ADMIN,
                                  "responses": _resp("userId, apiKey, apiSecret", _NEW_USER, *ADMIN, ok=201)}},
        "/admin/deposit": {"post": {"summary": "Deposit (idempotent by txId)", "security": _ADMIN,
                                    "requestBody": {"required": True, "content": {"application/json": {
                                        "schema": _ref("Transfer")}}},
                                    "responses": _resp("transfer", _TRANSFER_RESULT, *ADMIN, 404, 409)}},
        "/admin/withdraw": {"post": {"summary": "Withdraw (idempotent by txId)", "security": _ADMIN,
                                     "requestBody": {"required": True, "content": {"application/json": {
                                         "schema": _ref("Transfer")}}},
                                     "responses": _resp("transfer", _TRANSFER_RESULT, *ADMIN, 404, 409, 422)}},
    },
}
