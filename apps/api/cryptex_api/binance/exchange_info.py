"""GET /api/v3/exchangeInfo from the market specs: every filter is a spec field, so a
client that rounds to these filters sends only what the native validator accepts.

Status: open and postOnly -> TRADING (postOnly lists LIMIT_MAKER as its only order type),
cancelOnly and halted -> HALT, closed -> BREAK.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from cryptex_api.orders import max_price_ticks
from cryptex_common.binance import binance_symbol
from cryptex_common.markets import MarketSpec, MarketState
from cryptex_common.money import INT64_MAX, format_steps

STATUS = {MarketState.OPEN: "TRADING", MarketState.POST_ONLY: "TRADING", MarketState.CANCEL_ONLY: "HALT",
          MarketState.HALTED: "HALT", MarketState.CLOSED: "BREAK"}
STP_MODES = ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"]


def filters(spec: MarketSpec) -> list[dict[str, Any]]:
    tick = Decimal(spec.tick_size)
    max_price = format_steps(max_price_ticks(spec), tick)
    max_notional = format_steps(INT64_MAX, Decimal(1).scaleb(-spec.quote_decimals))
    lot = {"minQty": spec.min_quantity, "maxQty": spec.max_quantity, "stepSize": spec.lot_size}
    return [
        {"filterType": "PRICE_FILTER", "minPrice": spec.tick_size, "maxPrice": max_price, "tickSize": spec.tick_size},
        {"filterType": "LOT_SIZE", **lot},
        {"filterType": "MARKET_LOT_SIZE", **lot},
        {"filterType": "MIN_NOTIONAL", "minNotional": spec.min_notional, "applyToMarket": True, "avgPriceMins": 0},
        {"filterType": "NOTIONAL", "minNotional": spec.min_notional, "applyMinToMarket": True,
         "maxNotional": max_notional, "applyMaxToMarket": False, "avgPriceMins": 0},
    ]


def symbol_info(spec: MarketSpec) -> dict[str, Any]:
    order_types = ["LIMIT_MAKER"] if spec.state == MarketState.POST_ONLY else ["LIMIT", "LIMIT_MAKER", "MARKET"]
    return {
        "symbol": binance_symbol(spec.symbol), "status": STATUS[spec.state],
        "baseAsset": spec.base_asset, "baseAssetPrecision": spec.base_decimals,
        "quoteAsset": spec.quote_asset, "quotePrecision": spec.quote_decimals,
        "quoteAssetPrecision": spec.quote_decimals, "baseCommissionPrecision": spec.base_decimals,
        "quoteCommissionPrecision": spec.quote_decimals, "orderTypes": order_types,
        "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False, "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False, "cancelReplaceAllowed": False, "amendAllowed": False,
        "isSpotTradingAllowed": True, "isMarginTradingAllowed": False, "filters": filters(spec),
        "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": spec.self_trade_prevention.value.upper(),
        "allowedSelfTradePreventionModes": STP_MODES,
    }


def exchange_info(specs: list[MarketSpec], weight_limit: int, orders_per_s: float) -> dict[str, Any]:
    return {
        "timezone": "UTC", "serverTime": int(time.time() * 1000),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": weight_limit},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 1,
             "limit": int(orders_per_s)},
        ],
        "exchangeFilters": [],
        "symbols": [symbol_info(s) for s in sorted(specs, key=lambda s: s.symbol)],
    }
