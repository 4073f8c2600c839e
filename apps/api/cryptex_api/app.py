"""The REST API (aiohttp): `Api` holds what the handlers share and owns its collaborators
(signing: who is calling; order_routes, admin_routes, public_routes: the handlers;
middleware: the route wrappers and error answers); `create_app` mounts the routes.

Invariants: bad input never reaches a stream and never changes a balance (validation and
the funds check happen before or inside the one atomic enqueue call); every error is
`{"code", "message"[, "field"]}` with the status from cryptex_common.errors; every
accepted order gets an id, answered 200 with its result or 202 when the engine's reply
does not arrive within `reply_timeout_ms` (the order can then be looked up).

Hostile traffic: public reads use their own small Redis pool with a bounded wait
(`public_redis`), so they can never take the connections signed orders and admin calls use
(`redis`); unauthenticated and admin routes are limited per client address; headers and
query values are parsed by cryptex_api.params (whole-string, ASCII, bounded); a request
body must arrive within `body_timeout_s`. The connection cap and the header-read timeout
are in cryptex_api.serving; /metrics is served on the ops port only (main.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from cryptex_api import params
from cryptex_api.admin_routes import AdminHandlers
from cryptex_api.binance import add_routes as add_binance_routes
from cryptex_api.middleware import errors_and_metrics, order_route, private, public
from cryptex_api.order_routes import OrderHandlers
from cryptex_api.public_routes import PublicHandlers
from cryptex_api.replies import Reply, ReplyWaiter
from cryptex_api.settings import ApiSettings
from cryptex_api.signing import Authenticator
from cryptex_common import keys, metrics, registry, runtime
from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.ledger import Ledger
from cryptex_common.markets import MarketSpec, MarketState, normalize_symbol
from cryptex_common.messages import OrderRecord
from cryptex_common.money import parse_json
from cryptex_common.resp_cluster import OrderClient
from cryptex_common.wire import WireFormat

log = logging.getLogger("cryptex.api")
PREFIX = "/api/v1"
STATIC_DIR = Path(__file__).parent / "static"


class Api:
    """Holds the dependencies the handlers share; one per process. `markets`, `formats`
    and the market-name index are replaced together on each markets reload."""

    def __init__(self, settings: ApiSettings, redis: Redis, history: Any = None,
                 public_redis: Redis | None = None, order_redis: OrderClient | None = None) -> None:
        self.settings = settings
        self.redis = redis  # orders, cancels, balances, admin: authenticated callers only
        # the enqueue script's pipelined connection (cryptex_common.resp); None: via `redis`
        self.order_redis = order_redis
        self.public_redis = public_redis or redis  # public reads: never crowd out the above
        self.ledger = Ledger(redis)
        self.replies = ReplyWaiter(redis, settings.instance_id,
                                   settings.redis_url if order_redis is not None else None)
        self.known_markets = registry.MarketRegistry()
        self._market_names: dict[str, MarketSpec] = {}
        self.history = history
        self._markets_task: asyncio.Task[None] | None = None
        self.auth = Authenticator(settings, redis, self.command)
        self.orders = OrderHandlers(self)
        self.admin = AdminHandlers(self)
        self.public = PublicHandlers(self)

    # --- markets: views of known_markets as of its last reload --------------------------
    @property
    def markets(self) -> dict[str, MarketSpec]:
        return self.known_markets.specs

    @property
    def formats(self) -> dict[str, WireFormat]:
        return self.known_markets.formats

    @property
    def asset_decimals(self) -> dict[str, int]:
        return self.known_markets.asset_decimals

    async def reload_markets(self) -> None:
        await self.known_markets.reload(self.redis)
        self._market_names = {name: spec for symbol, spec in self.markets.items()
                              for name in (symbol, symbol.lower(), symbol.replace("/", "_"),
                                           symbol.replace("/", "_").lower())}

        if self.history is not None:
            self.history.markets = self.markets
        self._init_metrics()

    def _init_metrics(self) -> None:
        """Zero series for the label values this API owns, so rules and dashboards see the
        metrics before the first event (docs/observability.md)."""
        self.orders.init_metrics(self.markets)
        metrics.REDIS_ERRORS.labels(service="api")
        metrics.POSTGRES_ERRORS.labels(service="api")

    async def _watch_markets(self) -> None:
        while True:
            await self.replies.on_markets_changed.wait()
            self.replies.on_markets_changed.clear()
            try:
                await self.reload_markets()
            except Exception:
                log.exception("reloading markets failed")

    def market(self, raw: object) -> MarketSpec:
        """The market named by `raw` (any usual spelling); 400 MISSING_FIELD or UNKNOWN_MARKET."""
        if isinstance(raw, str):  # the usual spellings, resolved once per markets reload
            spec = self._market_names.get(raw)
            if spec is not None:
                return spec
        text = params.market_text(raw)
        if text is None:
            raise CryptexError(ErrorCode.MISSING_FIELD, "market is required", "market")
        spec = self.markets.get(normalize_symbol(text))
        if spec is None:
            raise CryptexError(ErrorCode.UNKNOWN_MARKET, f"unknown market: {text}", "market")
        return spec

    def check_state(self, spec: MarketSpec, *, cancelling: bool, post_only: bool = False) -> None:
        """Halted and closed markets take nothing; cancel-only takes cancels; post-only
        takes cancels and postOnly limit orders."""
        state = spec.state
        if state in (MarketState.HALTED, MarketState.CLOSED):
            raise CryptexError(ErrorCode.MARKET_HALTED, f"market {spec.symbol} is {state.value}")
        if cancelling:
            return
        if state == MarketState.CANCEL_ONLY:
            raise CryptexError(ErrorCode.MARKET_NOT_OPEN, f"market {spec.symbol} accepts cancels only")
        if state == MarketState.POST_ONLY and not post_only:
            raise CryptexError(ErrorCode.MARKET_NOT_OPEN,
                               f"market {spec.symbol} accepts postOnly limit orders only")

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self.reload_markets()
        await self.replies.start()
        self._markets_task = asyncio.create_task(self._watch_markets())

    async def stop(self) -> None:
        if self._markets_task:
            self._markets_task.cancel()
        await self.replies.stop()

    async def ready(self) -> bool:
        await self.redis.ping()
        return self.replies.healthy

    # --- shared helpers --------------------------------------------------------------
    async def command(self, *args: Any) -> Any:
        """One Redis command on the order path: over the pipelined connection when there is
        one (replies as hiredis gives them: bytes, ints, None), else through `redis`."""
        if self.order_redis is not None:
            return await self.order_redis.call(*args)
        return await self.redis.execute_command(*args)

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body, or 408 when it does not arrive within body_timeout_s."""
        if request.content.is_eof():  # it came with the headers: no timer needed
            return await request.read()
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise CryptexError(ErrorCode.REQUEST_TIMEOUT, "request body not received in time", "body") from None

    @staticmethod
    def read_json(body: bytes) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); 400 INVALID_JSON otherwise."""
        if not body:
            return {}
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise CryptexError(ErrorCode.INVALID_JSON, "body must be a JSON object", "body")
        return doc

    async def load_order(self, order_id: int) -> tuple[OrderRecord | None, str | None]:
        """The stored order record and its owner, (None, None) when there is none."""
        raw = await self.redis.hget(keys.order_key(order_id), "r")
        if not raw:
            return None, None
        rec = OrderRecord.model_validate_json(raw)
        return rec, rec.user_id

    def order_wire(self, rec: OrderRecord) -> dict[str, Any]:
        fmt = self.formats.get(rec.market)
        return fmt.order(rec) if fmt else rec.model_dump(by_alias=True, mode="json")

    async def wait_reply(self, fut: asyncio.Future[Reply | None], request_id: str) -> Reply | None:
        """The engine's reply, or None after reply_timeout_ms."""
        return await self.replies.wait(request_id, fut, self.settings.reply_timeout_ms / 1000)

    async def query_history(self, query: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run `query(reader)`; 503 HISTORY_UNAVAILABLE without a database or while it is away."""
        if self.history is None:
            raise CryptexError(ErrorCode.HISTORY_UNAVAILABLE, "history is not configured (no database)")
        try:
            return await query(self.history)
        except CryptexError:
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            metrics.POSTGRES_ERRORS.labels(service="api").inc()
            log.warning("history query failed", extra={"error": str(exc)})
            raise CryptexError(ErrorCode.HISTORY_UNAVAILABLE, "history database unavailable") from None


async def _index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def create_app(api: Api) -> web.Application:
    """The aiohttp application: every route, the error/metrics middleware, the ops routes
    (without /metrics, which only the ops port serves) and the web page."""
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=api.settings.max_body_bytes)
    r, orders, admin, pub = app.router, api.orders, api.admin, api.public
    r.add_post(f"{PREFIX}/order", order_route(api))
    r.add_delete(f"{PREFIX}/order", private(api, orders.cancel_order))
    r.add_get(f"{PREFIX}/order", private(api, orders.get_order, wants_body=False))
    r.add_delete(f"{PREFIX}/orders", private(api, orders.cancel_all))
    r.add_get(f"{PREFIX}/orders/open", private(api, orders.open_orders, wants_body=False))
    r.add_get(f"{PREFIX}/balances", private(api, orders.balances, wants_body=False))
    r.add_get(f"{PREFIX}/orders/history", private(api, orders.orders_history, wants_body=False))
    r.add_get(f"{PREFIX}/fills", private(api, orders.fills, wants_body=False))
    r.add_post(f"{PREFIX}/admin/users", admin.create_user)
    r.add_post(f"{PREFIX}/admin/deposit", admin.deposit)
    r.add_post(f"{PREFIX}/admin/withdraw", admin.withdraw)
    for path, handler in (("klines", pub.klines), ("markets", pub.list_markets), ("depth", pub.depth),
                          ("trades", pub.trades), ("ticker", pub.ticker), ("tickers", pub.tickers),
                          ("time", pub.server_time), ("openapi.json", pub.openapi)):
        r.add_get(f"{PREFIX}/{path}", public(api, handler))
    add_binance_routes(app, api)  # /api/v3: the Binance-compatible facade (docs/binance-compat.md)
    runtime.add_ops_routes(app, api.ready, with_metrics=False)  # /metrics: the ops port only
    if STATIC_DIR.is_dir():  # the browser trading page (plain modules, no build step)
        r.add_get("/", public(api, _index))
        r.add_static("/static/", STATIC_DIR)

    async def on_startup(_: web.Application) -> None:
        await api.start()

    async def on_cleanup(_: web.Application) -> None:
        await api.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
