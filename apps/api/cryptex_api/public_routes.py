"""Public market data (no signature): markets, depth, trades, tickers, klines, server time,
the OpenAPI document.

Invariants: these routes read through `Api.public_redis` (its own small pool with a
bounded wait), so public traffic can never take the connections signed orders and admin
calls use; each is limited per client address before any work (`middleware.public`);
history reads answer 503 HISTORY_UNAVAILABLE while PostgreSQL is away.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from cryptex_api import history as history_queries
from cryptex_api import params
from cryptex_api.openapi import OPENAPI
from cryptex_api.responses import json_response
from cryptex_common import keys
from cryptex_common.depth import read_depth
from cryptex_common.market_data import empty_book

if TYPE_CHECKING:
    from cryptex_api.app import Api


async def get_many(redis: Any, names: list[str]) -> list[bytes | None]:
    """GET of each key, in one pipeline (one round trip; on a Redis Cluster one per primary,
    in parallel). Not MGET: the keys (e.g. every market's ticker) lie in different slots."""
    if not names:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(name)
        return list(await pipe.execute())


class PublicHandlers:
    """The unauthenticated handlers; one per `Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def list_markets(self, _: web.Request) -> web.Response:
        return json_response([s.to_wire() for s in sorted(self.api.markets.values(), key=lambda s: s.symbol)])

    async def depth(self, request: web.Request) -> web.Response:
        spec = self.api.market(request.query.get("market"))
        limit = params.int_param(request.query, "limit", 100, 1, 200)
        book = await read_depth(self.api.public_redis, spec.symbol, limit)
        return json_response(book or empty_book(spec.symbol))

    async def trades(self, request: web.Request) -> web.Response:
        """Recent trades from Redis; older pages (`beforeId`) from PostgreSQL."""
        api = self.api
        if request.query.get("beforeId") is not None:
            q = history_queries.parse_trades_query(request.query)
            spec = api.market(q.market)
            return json_response(await api.query_history(
                lambda h: h.trades(spec, q.limit, q.before_trade_id)))
        spec = api.market(request.query.get("market"))
        limit = params.int_param(request.query, "limit", 100, 1, 1000)
        raw = await api.public_redis.lrange(keys.recent_trades_key(spec.symbol), 0, limit - 1)
        return json_response([orjson.loads(t) for t in raw])

    async def ticker(self, request: web.Request) -> web.Response:
        spec = self.api.market(request.query.get("market"))
        raw = await self.api.public_redis.get(keys.ticker_key(spec.symbol))
        return json_response(orjson.loads(raw) if raw else {"market": spec.symbol, "count": 0})

    async def tickers(self, _: web.Request) -> web.Response:
        symbols = sorted(self.api.markets)
        raws = await get_many(self.api.public_redis, [keys.ticker_key(s) for s in symbols])
        return json_response([orjson.loads(r) if r else {"market": s, "count": 0}
                              for s, r in zip(symbols, raws, strict=True)])

    async def server_time(self, _: web.Request) -> web.Response:
        return json_response({"serverTime": int(time.time() * 1000)})

    async def klines(self, request: web.Request) -> web.Response:
        q = history_queries.parse_klines_query(request.query)
        spec = self.api.market(q.market)
        return json_response(await self.api.query_history(
            lambda h: h.klines(spec, q.interval, q.start_ms, q.end_ms, q.limit)))

    async def openapi(self, _: web.Request) -> web.Response:
        return json_response(OPENAPI)
