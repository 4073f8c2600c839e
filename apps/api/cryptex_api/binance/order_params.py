"""POST /api/v3/order parameters -> the native order body that `validate_order` takes.

Binance's own parameter rules are checked here (which parameters each type needs or
refuses, the decimal syntax, the enums); every market rule (tick and lot grid, min/max
quantity, min notional, funds) is left to the native validator and the enqueue script,
so the facade can never accept an order the native route would refuse.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptex_api.binance.errors import BinanceError, illegal, mandatory, not_required, not_valid
from cryptex_api.binance.formats import STP_MODES

_DECIMAL = re.compile(r"([0-9]{1,20})(\.[0-9]{1,20})?")
_DECIMAL_RULE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
_CLIENT_ID = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")
SIDES = {"BUY": "buy", "SELL": "sell"}
TYPES = ("LIMIT", "MARKET", "LIMIT_MAKER")
UNSUPPORTED_TYPES = ("STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
TIFS = ("GTC", "IOC", "FOK")
RESP_TYPES = ("ACK", "RESULT", "FULL")
COMMON = frozenset({"symbol", "side", "type", "timestamp", "recvWindow", "newClientOrderId", "newOrderRespType",
                    "selfTradePreventionMode", "computeCommissionRates"})
UNSUPPORTED = ("stopPrice", "trailingDelta", "icebergQty", "strategyId", "strategyType", "pegPriceType",
               "pegOffsetValue", "pegOffsetType")


# generated client order ids: a random per-process prefix and a counter (unique without
# drawing random bytes per order)
_ID_PREFIX = "cx" + secrets.token_hex(5)
_ID_COUNTER = itertools.count(1)


@dataclass(frozen=True, slots=True)
class NewOrder:
    body: dict[str, Any]  # the native POST /api/v1/order body
    resp_type: str
    is_market: bool


def _decimal(params: dict[str, str], name: str) -> str | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw == "":
        raise BinanceError(-1105, f"Parameter '{name}' was empty.")
    if not _DECIMAL.fullmatch(raw):
        raise illegal(name, _DECIMAL_RULE)
    return raw


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise mandatory(name)
    return value


def _check_names(params: dict[str, str], allowed: frozenset[str]) -> None:
    for name in UNSUPPORTED:
        if name in params:
            raise not_required(name)
    unknown = [n for n in params if n not in allowed]
    if unknown:
        raise BinanceError(-1104, f"Not all sent parameters were read; read '{len(params) - len(unknown)}' "
                                  f"parameter(s) but was sent '{len(params)}'.")


def _order_type(params: dict[str, str]) -> str:
    kind = _required(params, "type")
    if kind in UNSUPPORTED_TYPES:
        raise BinanceError(-1013, f"{kind} orders are not supported for this symbol.")
    if kind not in TYPES:
        raise BinanceError(-1116, "Invalid orderType.")
    return kind


def _limit_fields(params: dict[str, str], kind: str, body: dict[str, Any]) -> None:
    body["price"] = _decimal(params, "price") or _raise(mandatory("price"))
    body["quantity"] = _decimal(params, "quantity") or _raise(mandatory("quantity"))
    if "quoteOrderQty" in params:
        raise not_required("quoteOrderQty")
    if kind == "LIMIT_MAKER":
        if "timeInForce" in params:
            raise not_required("timeInForce")
        body.update(timeInForce="GTC", postOnly=True)
        return
    tif = _required(params, "timeInForce")
    if tif not in TIFS:
        raise BinanceError(-1115, "Invalid timeInForce.")
    body["timeInForce"] = tif


def _market_fields(params: dict[str, str], body: dict[str, Any]) -> None:
    for name in ("price", "timeInForce"):
        if name in params:
            raise not_required(name)
    quantity, quote = _decimal(params, "quantity"), _decimal(params, "quoteOrderQty")
    if quantity is None and quote is None:
        raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!")
    if quantity is not None and quote is not None:
        raise not_required("quoteOrderQty")
    if quote is not None and body["side"] == "sell":
        raise BinanceError(-1013, "Quote order qty market sells are not supported for this symbol.")
    body["timeInForce"] = "IOC"
    if quantity is not None:
        body["quantity"] = quantity
    else:
        body["quoteQuantity"] = quote


def _raise(err: BinanceError) -> Any:
    raise err


def new_order(params: dict[str, str], market: str) -> NewOrder:
    """The native body for a Binance new-order request (market: the resolved Cryptex symbol)."""
    _check_names(params, COMMON | {"price", "quantity", "quoteOrderQty", "timeInForce"})
    side = SIDES.get(_required(params, "side"))
    if side is None:
        raise BinanceError(-1117, "Invalid side.")
    kind = _order_type(params)
    body: dict[str, Any] = {"market": market, "side": side, "type": "market" if kind == "MARKET" else "limit"}
    if kind == "MARKET":
        _market_fields(params, body)
    else:
        _limit_fields(params, kind, body)
    coid = params.get("newClientOrderId")
    if coid is not None and not _CLIENT_ID.fullmatch(coid):
        raise illegal("newClientOrderId", "^[a-zA-Z0-9-_]{1,36}$")
    # Binance names every order: one is generated when none was sent
    body["clientOrderId"] = coid or f"{_ID_PREFIX}{next(_ID_COUNTER):x}"
    stp = params.get("selfTradePreventionMode")
    if stp is not None:
        if stp not in STP_MODES:
            raise BinanceError(-1013, "This symbol does not allow the specified self-trade prevention mode.")
        body["selfTradePrevention"] = STP_MODES[stp]
    resp_type = params.get("newOrderRespType") or "FULL"
    if resp_type not in RESP_TYPES:
        raise not_valid("newOrderRespType")
    return NewOrder(body, resp_type, kind == "MARKET")
