"""Real Binance clients pointed at the facade: only their base URLs changed."""

from __future__ import annotations

from typing import Any

import ccxt
import ccxt.async_support as accxt

from tests.binance.conftest import User
from tests.binance.spec_check import RECORDER

CCXT_OPTIONS = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}


def _urls(exchange: Any, base: str) -> None:
    """Replace the whole urls['api'] dict: spot routes to the facade, every other API
    family to a path the facade does not serve, so nothing points at binance.com."""
    exchange.urls["api"] = {name: f"{base}/api/v3" if name in ("public", "private") else f"{base}/unsupported/{name}"
                            for name in exchange.urls["api"]}
    assert not any("binance" in url for url in exchange.urls["api"].values())


class _Recording:
    """Every answer ccxt receives is recorded for the spec check (spec_check.RECORDER)."""

    def on_rest_response(self, code: Any, reason: Any, url: Any, method: Any, response_headers: Any,
                         response_body: Any, request_headers: Any, request_body: Any) -> Any:
        RECORDER.record(method, url, int(code), response_body)
        return response_body.strip()


class RecordingBinance(_Recording, ccxt.binance):
    pass


class AsyncRecordingBinance(_Recording, accxt.binance):
    pass


def record_requests(session: Any) -> Any:
    """A requests.Session whose answers are recorded for the spec check."""
    session.hooks["response"].append(
        lambda r, *a, **k: RECORDER.record(r.request.method, r.url, r.status_code, r.content))
    return session


def ccxt_sync(base: str, user: User | None = None) -> RecordingBinance:
    keys = {"apiKey": user.api_key, "secret": user.api_secret} if user else {}
    exchange = RecordingBinance({**keys, "options": dict(CCXT_OPTIONS), "enableRateLimit": False})
    _urls(exchange, base)
    return exchange


def ccxt_async(base: str, user: User | None = None) -> AsyncRecordingBinance:
    keys = {"apiKey": user.api_key, "secret": user.api_secret} if user else {}
    exchange = AsyncRecordingBinance({**keys, "options": dict(CCXT_OPTIONS), "enableRateLimit": False})
    _urls(exchange, base)
    return exchange
