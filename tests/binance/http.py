"""A minimal Binance-signing HTTP client (requests) for the facade tests that need to send
exactly what a test wants: parameters in the query string or the form body, a chosen
timestamp, recvWindow or signature. Its answers are recorded for the spec check."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urlencode

import requests

from tests.binance.clients import record_requests
from tests.binance.conftest import User


class BinanceHttp:
    def __init__(self, base: str, user: User | None = None, source_address: str | None = None) -> None:
        self.base = base
        self.user = user
        self.session = record_requests(requests.Session())
        if source_address is not None:  # another loopback address: another client for the weight limit
            adapter = _SourceAdapter(source_address)
            self.session.mount("http://", adapter)

    def signed_query(self, params: dict[str, Any], timestamp: int | None = None, secret: str | None = None) -> str:
        assert self.user is not None
        full = {**params, "timestamp": timestamp if timestamp is not None else int(time.time() * 1000)}
        query = urlencode(full)
        key = (secret or self.user.api_secret).encode()
        return f"{query}&signature={hmac.new(key, query.encode(), hashlib.sha256).hexdigest()}"

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, *, signed: bool = False,
             in_body: bool = False, raw: str | None = None, key: str | None = None, **sign: Any) -> requests.Response:
        """`raw`: an exact, already signed parameter string (a replay)."""
        text = raw if raw is not None else (
            self.signed_query(params or {}, **sign) if signed else urlencode(params or {}))
        api_key = key or (self.user.api_key if self.user else None)
        headers = {"X-MBX-APIKEY": api_key} if api_key else {}
        url = f"{self.base}/api/v3/{path}"
        if in_body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            return self.session.request(method, url, data=text, headers=headers, timeout=10)
        return self.session.request(method, f"{url}?{text}" if text else url, headers=headers, timeout=10)


class _SourceAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, source_address: str) -> None:
        self.source_address = source_address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source_address, 0)
        super().init_poolmanager(*args, **kwargs)
