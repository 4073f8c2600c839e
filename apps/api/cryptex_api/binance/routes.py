"""The Binance-compatible REST facade, `/api/v3/...` on the API port: `Facade` owns the
symbol index, the request-weight counter and the handler groups (market: public data;
trading: orders and the account; account: history and listen keys), and `add_routes`
mounts them. docs/binance-compat.md lists every route and each difference from Binance.

Invariants: every answer is Binance-shaped (an error is `{"code": -NNNN, "msg"}`, never
the native `{"code": "NAME", ...}`) and carries `X-MBX-USED-WEIGHT-1M`; orders, cancels
and lookups go through the native handlers (cryptex_api.order_routes), never around them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError

from cryptex_api.binance.account import Account
from cryptex_api.binance.auth import Signed, Weights, verify
from cryptex_api.binance.errors import BinanceError, from_native, invalid_symbol, mandatory
from cryptex_api.binance.market import Market, depth_weight
from cryptex_api.binance.trading import Trading
from cryptex_api.responses import GuardChecked, RateLimited
from cryptex_common.binance import binance_symbol
from cryptex_common.errors import CryptexError
from cryptex_common.markets import MarketSpec
from cryptex_common.wire import WireFormat

if TYPE_CHECKING:
    from cryptex_api.app import Api

log = logging.getLogger("cryptex.api")
PREFIX = "/api/v3"
Weight = int | Callable[[dict[str, str]], int]


class BinanceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRYPTEX_BINANCE_", extra="ignore")
    weight_limit: int = Field(default=6_000, ge=1, description="request weight per client address per minute")


class Facade:
    def __init__(self, api: Api, settings: BinanceSettings | None = None) -> None:
        self.api = api
        self.settings = settings or BinanceSettings()
        self.weights = Weights(self.settings.weight_limit)
        self._index_of: object = None
        self._symbols: dict[str, MarketSpec] = {}
        self.market = Market(self)
        self.trading = Trading(self)
        self.account = Account(self)

    # --- symbols ---------------------------------------------------------------------
    def _index(self) -> dict[str, MarketSpec]:
        markets = self.api.markets
        if self._index_of is not markets:  # rebuilt once per markets reload
            self._symbols = {binance_symbol(s): spec for s, spec in markets.items()}
            self._index_of = markets
        return self._symbols

    def spec(self, params: dict[str, str]) -> MarketSpec:
        raw = params.get("symbol")
        if not raw:
            raise mandatory("symbol")
        spec = self._index().get(raw.upper())
        if spec is None:
            raise invalid_symbol()
        return spec

    def specs(self, params: dict[str, str]) -> list[MarketSpec]:
        """`symbol`, `symbols` (a JSON array) or, with neither, every market."""
        if params.get("symbol"):
            return [self.spec(params)]
        raw = params.get("symbols")
        if raw is None:
            return [self._index()[s] for s in sorted(self._index())]
        try:
            names = orjson.loads(raw)
        except orjson.JSONDecodeError:
            names = None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'; legal range is "
                                      "'^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
        return [self.spec({"symbol": n}) for n in names]

    def fmt(self, spec: MarketSpec) -> WireFormat:
        return self.api.formats.get(spec.symbol) or WireFormat(spec)

    # --- answering -------------------------------------------------------------------
    async def answer(self, request: web.Request, weight: Weight, work: Callable[[], Awaitable[Any]]) -> web.Response:
        """Run `work` after taking its weight; its payload or its error, Binance-shaped."""
        used = 0
        try:
            cost = weight if isinstance(weight, int) else weight(dict(request.query))
            used = self.weights.take(request.remote or "unknown", cost)
            resp = web.Response(body=orjson.dumps(await work()), content_type="application/json")
        except BinanceError as err:
            resp = err.response()
        except CryptexError as err:
            resp = from_native(err).response()
        except GuardChecked as checked:
            resp = from_native(checked.error).response()
        except RateLimited as rl:
            resp = BinanceError(-1015, "Too many new orders; current limit is "
                                f"{int(self.api.settings.rate_limit_per_s)} orders per SECOND.", 429,
                                {"Retry-After": str(max(1, int(rl.retry_after_s + 0.999)))}).response()
        except web.HTTPRequestEntityTooLarge:
            resp = BinanceError(-1101, "Too many parameters; the request is too large.").response()
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable", extra={"path": request.path, "error": repr(exc)})
            resp = BinanceError(-1001, "Internal error; unable to process your request. Please try again.",
                                503).response()
        resp.headers["X-MBX-USED-WEIGHT-1M"] = str(used or self.weights.used(request.remote or "unknown"))
        return resp

    def public(self, handler: Callable[[web.Request, dict[str, str]], Awaitable[Any]], weight: Weight) -> Any:
        async def wrapped(request: web.Request) -> web.Response:
            return await self.answer(request, weight, lambda: handler(request, dict(request.query)))
        return wrapped

    def signed(self, handler: Callable[[web.Request, Signed], Awaitable[Any]], weight: Weight) -> Any:
        async def wrapped(request: web.Request) -> web.Response:
            async def work() -> Any:
                body = await self.api.read_body(request)
                return await handler(request, await verify(self.api, request, body))
            return await self.answer(request, weight, work)
        return wrapped

    def keyed(self, handler: Callable[[web.Request, bytes], Awaitable[Any]], weight: Weight) -> Any:
        async def wrapped(request: web.Request) -> web.Response:
            async def work() -> Any:
                return await handler(request, await self.api.read_body(request))
            return await self.answer(request, weight, work)
        return wrapped


def _by_symbol(one: int, every: int) -> Weight:
    return lambda params: one if params.get("symbol") else every


def add_routes(app: web.Application, api: Api) -> Facade:
    """Mount /api/v3 (Binance's weights per route)."""
    f = Facade(api)
    r, m, t, a = app.router, f.market, f.trading, f.account
    for path, handler, weight in (
            ("ping", m.ping, 1), ("time", m.time, 1), ("exchangeInfo", m.exchange_info, 20),
            ("depth", m.depth, depth_weight), ("trades", m.trades, 25), ("aggTrades", m.agg_trades, 4),
            ("klines", m.klines, 2), ("ticker/24hr", m.ticker_24hr, _by_symbol(2, 80)),
            ("ticker/price", m.ticker_price, _by_symbol(2, 4)), ("ticker/bookTicker", m.book_ticker, _by_symbol(2, 4)),
            ("avgPrice", m.avg_price, 2)):
        r.add_get(f"{PREFIX}/{path}", f.public(handler, weight))
    r.add_post(f"{PREFIX}/order", f.signed(t.place, 1))
    r.add_get(f"{PREFIX}/order", f.signed(t.get_order, 4))
    r.add_delete(f"{PREFIX}/order", f.signed(t.cancel, 1))
    r.add_post(f"{PREFIX}/order/test", f.signed(t.test_order, 1))
    r.add_get(f"{PREFIX}/openOrders", f.signed(t.open_orders, _by_symbol(6, 80)))
    r.add_delete(f"{PREFIX}/openOrders", f.signed(t.cancel_all, 1))
    r.add_get(f"{PREFIX}/account", f.signed(t.account, 20))
    r.add_get(f"{PREFIX}/allOrders", f.signed(a.all_orders, 20))
    r.add_get(f"{PREFIX}/myTrades", f.signed(a.my_trades, 20))
    r.add_post(f"{PREFIX}/userDataStream", f.keyed(a.new_listen_key, 2))
    r.add_put(f"{PREFIX}/userDataStream", f.keyed(a.keep_alive, 2))
    r.add_delete(f"{PREFIX}/userDataStream", f.keyed(a.close_listen_key, 2))
    return f
