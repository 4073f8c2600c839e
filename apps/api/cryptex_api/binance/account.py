"""Signed history routes (allOrders, myTrades: PostgreSQL, written by dbproc, so an order
or fill appears there once dbproc has committed it) and the user data stream's listen
keys (POST, PUT, DELETE /api/v3/userDataStream: X-MBX-APIKEY only, no signature, as on
Binance), stored as `keys.listen_key(key)` -> user id for the gateway's
`/binance/ws/<listenKey>`, expiring LISTEN_KEY_TTL_S after the last keep-alive.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cryptex_api.binance import formats, history_sql
from cryptex_api.binance.auth import Signed, api_key, key_owner, parse_params, raw_parts
from cryptex_api.binance.errors import BinanceError, mandatory
from cryptex_api.binance.market import uint
from cryptex_common import keys
from cryptex_common.binance import LISTEN_KEY_BYTES, LISTEN_KEY_TTL_S
from cryptex_common.resp import as_text

if TYPE_CHECKING:
    from cryptex_api.binance.routes import Facade

NO_LISTEN_KEY = "This listenKey does not exist."


class Account:
    def __init__(self, facade: Facade) -> None:
        self.facade = facade
        self.api = facade.api

    async def all_orders(self, request: web.Request, s: Signed) -> Any:
        if not s.params.get("symbol"):
            raise mandatory("symbol")
        spec = self.facade.spec(s.params)
        p = s.params
        limit = uint(p, "limit", 500, 1000) or 500
        rows = await self.api.query_history(lambda h: history_sql.all_orders(
            h, spec, s.user_id, uint(p, "orderId"), uint(p, "startTime"), uint(p, "endTime"), limit))
        fmt, stp = self.facade.fmt(spec), formats.STP_NAMES[spec.self_trade_prevention.value]
        return [formats.queried(o, fmt, stp) for o in rows]

    async def my_trades(self, request: web.Request, s: Signed) -> Any:
        if not s.params.get("symbol"):
            raise mandatory("symbol")
        spec = self.facade.spec(s.params)
        p = s.params
        if p.get("fromId") and p.get("startTime"):
            raise BinanceError(-1128, "Combination of optional parameters invalid.")
        limit = uint(p, "limit", 500, 1000) or 500
        rows = await self.api.query_history(lambda h: history_sql.my_trades(
            h, spec, s.user_id, uint(p, "orderId"), uint(p, "fromId"), uint(p, "startTime"), uint(p, "endTime"),
            limit))
        return [formats.my_trade(f) for f in rows]

    # --- listen keys -----------------------------------------------------------------
    async def _owner(self, request: web.Request, body: bytes) -> tuple[str, dict[str, str]]:
        user_id, _ = await key_owner(self.api, request, api_key(request))
        return user_id, parse_params(*raw_parts(request, body))

    async def new_listen_key(self, request: web.Request, body: bytes) -> Any:
        user_id, _ = await self._owner(request, body)
        key = secrets.token_hex(LISTEN_KEY_BYTES)
        await self.api.redis.set(keys.listen_key(key), user_id, ex=LISTEN_KEY_TTL_S)
        return {"listenKey": key}

    async def _own_key(self, request: web.Request, body: bytes) -> str:
        user_id, params = await self._owner(request, body)
        key = params.get("listenKey")
        if not key:
            raise mandatory("listenKey")
        owner = await self.api.redis.get(keys.listen_key(key))
        if owner is None or as_text(owner) != user_id:
            raise BinanceError(-1125, NO_LISTEN_KEY)
        return key

    async def keep_alive(self, request: web.Request, body: bytes) -> Any:
        key = await self._own_key(request, body)
        await self.api.redis.expire(keys.listen_key(key), LISTEN_KEY_TTL_S)
        return {}

    async def close_listen_key(self, request: web.Request, body: bytes) -> Any:
        key = await self._own_key(request, body)
        await self.api.redis.delete(keys.listen_key(key))
        return {}
