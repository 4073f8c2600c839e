"""Real Binance clients pointed at the facade: only their base URLs changed."""

from __future__ import annotations

from typing import Any

import ccxt
import ccxt.async_support as accxt

from tests.binance.conftest import User

CCXT_OPTIONS = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}


def _urls(exchange: Any, base: str) -> None:
    """Replace the whole urls['api'] dict: spot routes to the facade, every other API
    family to a path the facade does not serve, so nothing points at binance.com."""
    exchange.urls["api"] = {name: f"{base}/api/v3" if name in ("public", "private") else f"{base}/unsupported/{name}"
                            for name in exchange.urls["api"]}
    assert not any("binance" in url for url in exchange.urls["api"].values())


def ccxt_sync(base: str, user: User | None = None) -> ccxt.binance:
    keys = {"apiKey": user.api_key, "secret": user.api_secret} if user else {}
    exchange = ccxt.binance({**keys, "options": dict(CCXT_OPTIONS), "enableRateLimit": False})
    _urls(exchange, base)
    return exchange


def ccxt_async(base: str, user: User | None = None) -> accxt.binance:
    keys = {"apiKey": user.api_key, "secret": user.api_secret} if user else {}
    exchange = accxt.binance({**keys, "options": dict(CCXT_OPTIONS), "enableRateLimit": False})
    _urls(exchange, base)
    return exchange
