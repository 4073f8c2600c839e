"""A small async Python client for the Cryptex REST API that signs private requests.

    async with CryptexClient("http://127.0.0.1:8080", api_key, api_secret) as cx:
        await cx.place_order(kind="buy", type="limit", price="120", quantity="1", market="sol/usdc")

Every method returns (status, body). Admin calls need `admin_token`.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from yarl import URL

from cryptex_common.auth import sign

__all__ = ["CryptexClient", "Response"]


class Response:
    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def __iter__(self) -> Any:
        return iter((self.status, self.body))

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body!r})"


class CryptexClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        api_secret: str | None = None,
        admin_token: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self.admin_token = admin_token
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> CryptexClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use `async with CryptexClient(...)`")
        return self._session

    def with_keys(self, api_key: str, api_secret: str) -> CryptexClient:
        """Another client for a different user sharing this client's HTTP session."""
        return CryptexClient(self.base_url, api_key, api_secret, self.admin_token, self.session)

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        *,
        signed: bool = False,
        admin: bool = False,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        path_qs = "/api/v1" + path
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            path_qs += "?" + urlencode(query)
        data = raw_body if raw_body is not None else (b"" if body is None else orjson.dumps(body))
        hdrs = {"Content-Type": "application/json"} if data else {}
        if signed:
            if not self.api_key or not self.api_secret:
                raise RuntimeError("this client has no API key")
            # strictly increasing per client: a byte-identical request signed in the same
            # millisecond would otherwise be refused as a replay
            self._last_ts_ms = max(int(time.time() * 1000), getattr(self, "_last_ts_ms", 0) + 1)
            ts = str(self._last_ts_ms)
            hdrs.update({"X-CX-KEY": self.api_key, "X-CX-TS": ts,
                         "X-CX-SIGN": sign(self.api_secret, ts, method, path_qs, data)})
        if admin:
            hdrs["Authorization"] = f"Bearer {self.admin_token}"
        hdrs.update(headers or {})
        async with self.session.request(method, URL(self.base_url + path_qs, encoded=True), data=data or None,
                                        headers=hdrs) as resp:
            text = await resp.read()
            try:
                parsed = orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                parsed = text.decode(errors="replace")
            return Response(resp.status, parsed, dict(resp.headers))

    # --- private ---------------------------------------------------------------------
    async def place_order(self, **order: Any) -> Response:
        return await self.request("POST", "/order", body=order, signed=True)

    async def cancel_order(self, order_id: str | None = None, client_order_id: str | None = None) -> Response:
        return await self.request("DELETE", "/order", params={"orderId": order_id,
                                  "clientOrderId": client_order_id}, signed=True)

    async def cancel_all(self, market: str | None = None) -> Response:
        return await self.request("DELETE", "/orders", params={"market": market}, signed=True)

    async def get_order(self, order_id: str | None = None, client_order_id: str | None = None) -> Response:
        return await self.request("GET", "/order", params={"orderId": order_id,
                                  "clientOrderId": client_order_id}, signed=True)

    async def open_orders(self, market: str | None = None) -> Response:
        return await self.request("GET", "/orders/open", params={"market": market}, signed=True)

    async def order_history(self, **params: Any) -> Response:
        return await self.request("GET", "/orders/history", params=params, signed=True)

    async def fills(self, **params: Any) -> Response:
        return await self.request("GET", "/fills", params=params, signed=True)

    async def balances(self) -> Response:
        return await self.request("GET", "/balances", signed=True)

    async def balance_map(self) -> dict[str, dict[str, str]]:
        resp = await self.balances()
        return {b["asset"]: {"available": b["available"], "locked": b["locked"]} for b in resp.body}

    # --- public ----------------------------------------------------------------------
    async def markets(self) -> Response:
        return await self.request("GET", "/markets")

    async def depth(self, market: str, limit: int | None = None) -> Response:
        return await self.request("GET", "/depth", params={"market": market, "limit": limit})

    async def trades(self, market: str, limit: int | None = None) -> Response:
        return await self.request("GET", "/trades", params={"market": market, "limit": limit})

    async def ticker(self, market: str) -> Response:
        return await self.request("GET", "/ticker", params={"market": market})

    async def klines(self, market: str, interval: str | None = None, **params: Any) -> Response:
        query = {"market": market, **({"interval": interval} if interval else {}), **params}
        return await self.request("GET", "/klines", params=query)

    # --- admin -----------------------------------------------------------------------
    async def create_user(self) -> Response:
        return await self.request("POST", "/admin/users", admin=True)

    async def deposit(self, user_id: str, asset: str, amount: str, tx_id: str) -> Response:
        return await self.request("POST", "/admin/deposit", admin=True, body={
            "userId": user_id, "asset": asset, "amount": amount, "txId": tx_id})

    async def withdraw(self, user_id: str, asset: str, amount: str, tx_id: str) -> Response:
        return await self.request("POST", "/admin/withdraw", admin=True, body={
            "userId": user_id, "asset": asset, "amount": amount, "txId": tx_id})

    async def new_funded_user(self, funds: dict[str, str], tx_prefix: str = "") -> CryptexClient:
        """Create a user, deposit `funds` ({asset: amount}), return a client signed as them."""
        created = await self.create_user()
        if created.status != 201:
            raise RuntimeError(f"create_user failed: {created}")
        user = created.body
        for asset, amount in funds.items():
            tx = f"{tx_prefix}seed-{user['userId']}-{asset}"
            dep = await self.deposit(user["userId"], asset, amount, tx)
            if dep.status != 200:
                raise RuntimeError(f"deposit failed: {dep}")
        client = self.with_keys(user["apiKey"], user["apiSecret"])
        client.user_id = user["userId"]  # type: ignore[attr-defined]
        return client
