"""The OpenAPI 3.1 document served at /api/v1/openapi.json (kept by hand, checked by a
test against the routes the app really registers)."""

from __future__ import annotations

from typing import Any

_DEC = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "description": "decimal string"}
_NUM = {"oneOf": [_DEC, {"type": "number"}], "description": "JSON number or decimal string"}
_ERR = {"$ref": "#/components/schemas/Error"}
_SIGNED: list[dict[str, list[str]]] = [{"cxKey": [], "cxTs": [], "cxSign": []}]


def _q(name: str, required: bool = False, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema or {"type": "string"}}


def _resp(desc: str, *codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": desc}}
    for c in codes:
        out[str(c)] = {"description": "error", "content": {"application/json": {"schema": _ERR}}}
    return out


_MARKET = _q("market", True)
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
            "NewOrder": {"type": "object", "required": ["market", "type"], "additionalProperties": False,
                         "properties": {
                             "market": {"type": "string", "examples": ["sol/usdc", "SOL_USDC"]},
                             "kind": {"enum": ["buy", "sell"]}, "side": {"enum": ["buy", "sell"]},
                             "type": {"enum": ["limit", "market"]}, "price": _NUM, "quantity": _NUM,
                             "quoteQuantity": _NUM, "timeInForce": {"enum": ["GTC", "IOC", "FOK"]},
                             "postOnly": {"type": "boolean"},
                             "clientOrderId": {"type": "string", "maxLength": 36},
                             "selfTradePrevention": {"enum": ["expire_maker", "expire_taker",
                                                              "expire_both", "none"]}}},
            "Transfer": {"type": "object", "required": ["userId", "asset", "amount", "txId"],
                         "properties": {"userId": {"type": "string"}, "asset": {"type": "string"},
                                        "amount": _NUM, "txId": {"type": "string"}}},
        },
    },
    "paths": {
        "/order": {
            "post": {"summary": "Place an order", "security": _SIGNED,
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/NewOrder"},
                         "example": {"kind": "buy", "type": "limit", "price": 12000,
                                     "quantity": 20, "market": "sol/usdc"}}}},
                     "responses": {**_resp("order result with fills", 400, 401, 413, 422, 429, 503),
                                   "202": {"description": "queued; engine reply not yet received"}}},
            "delete": {"summary": "Cancel an order", "security": _SIGNED,
                       "parameters": [_q("orderId"), _q("clientOrderId")],
                       "responses": _resp("cancelled order", 400, 401, 404, 409, 503)},
            "get": {"summary": "Get an order", "security": _SIGNED,
                    "parameters": [_q("orderId"), _q("clientOrderId")],
                    "responses": _resp("order", 400, 401, 404)},
        },
        "/orders": {"delete": {"summary": "Cancel all open orders (of a market)", "security": _SIGNED,
                               "parameters": [_q("market")], "responses": _resp("cancelled", 400, 401)}},
        "/orders/open": {"get": {"summary": "Open orders", "security": _SIGNED,
                                 "parameters": [_q("market")], "responses": _resp("orders", 401)}},
        "/orders/history": {"get": {"summary": "Order history (PostgreSQL)", "security": _SIGNED,
                                    "parameters": [_q("market"), _q("startTime"), _q("endTime"), _q("limit")],
                                    "responses": _resp("orders", 400, 401)}},
        "/fills": {"get": {"summary": "Your fills (PostgreSQL)", "security": _SIGNED,
                           "parameters": [_q("market"), _q("startTime"), _q("endTime"), _q("limit")],
                           "responses": _resp("fills", 400, 401)}},
        "/balances": {"get": {"summary": "Balances", "security": _SIGNED, "responses": _resp("balances", 401)}},
        "/markets": {"get": {"summary": "Markets and their rules", "responses": _resp("markets")}},
        "/depth": {"get": {"summary": "Order book with lastUpdateId",
                           "parameters": [_MARKET, _q("limit", schema={"type": "integer", "maximum": 200})],
                           "responses": _resp("book", 400)}},
        "/trades": {"get": {"summary": "Recent trades", "parameters": [_MARKET, _q("limit")],
                            "responses": _resp("trades", 400)}},
        "/ticker": {"get": {"summary": "24 h ticker", "parameters": [_MARKET], "responses": _resp("ticker", 400)}},
        "/tickers": {"get": {"summary": "All 24 h tickers", "responses": _resp("tickers")}},
        "/klines": {"get": {"summary": "Candles, Binance row order",
                            "parameters": [_MARKET, _q("interval", True), _q("startTime"), _q("endTime"),
                                           _q("limit")],
                            "responses": _resp("rows [openTime, o, h, l, c, volume, closeTime, "
                                               "quoteVolume, count]", 400)}},
        "/time": {"get": {"summary": "Server time", "responses": _resp("serverTime")}},
        "/admin/users": {"post": {"summary": "Create a user", "security": [{"admin": []}],
                                  "responses": {"201": {"description": "userId, apiKey, apiSecret"}}}},
        "/admin/deposit": {"post": {"summary": "Deposit (idempotent by txId)", "security": [{"admin": []}],
                                    "requestBody": {"content": {"application/json": {
                                        "schema": {"$ref": "#/components/schemas/Transfer"}}}},
                                    "responses": _resp("transfer", 400, 401, 404, 409)}},
        "/admin/withdraw": {"post": {"summary": "Withdraw (idempotent by txId)", "security": [{"admin": []}],
                                     "requestBody": {"content": {"application/json": {
                                         "schema": {"$ref": "#/components/schemas/Transfer"}}}},
                                     "responses": _resp("transfer", 400, 401, 404, 409, 422)}},
    },
}
