"""Signed Binance routes: order (POST, GET, DELETE), order/test, openOrders (GET, DELETE),
account. Each is a translation onto the native handlers (`OrderHandlers`): the same
validation, enqueue script, engine, replies and lookups as /api/v1, with their answers
turned into Binance's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from cryptex_api.binance import formats
from cryptex_api.binance.auth import Signed, guard, script_guard_covers
from cryptex_api.binance.errors import TIMEOUT, BinanceError, from_native, mandatory
from cryptex_api.binance.order_params import new_order
from cryptex_api.orders import validate_order
from cryptex_api.responses import GuardChecked
from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import OrderRecord
from cryptex_common.money import format_units
from cryptex_common.wire import WireFormat

if TYPE_CHECKING:
    from cryptex_api.binance.routes import Facade


def native_answer(resp: web.Response, *, cancelling: bool = False, market_order: bool = False) -> dict[str, Any]:
    """A native handler's JSON answer; its errors and its 202 (no engine reply in time) as
    Binance errors."""
    assert isinstance(resp.body, bytes)
    doc: dict[str, Any] = orjson.loads(resp.body)
    if resp.status == 202:
        raise BinanceError(-1007, TIMEOUT, 503)
    if resp.status >= 400:
        code = doc.get("code", "")
        native = ErrorCode(code) if code in ErrorCode.__members__ else ErrorCode.CONFLICT
        raise from_native(CryptexError(native, doc.get("message", code), doc.get("field")),
                          cancelling=cancelling, market_order=market_order)
    return doc


class Trading:
    """The signed handlers `(request, signed) -> payload`; one per Facade."""

    def __init__(self, facade: Facade) -> None:
        self.facade = facade
        self.api = facade.api

    def _stp(self, spec: MarketSpec) -> str:
        return formats.STP_NAMES[spec.self_trade_prevention.value]

    def _fmt(self, spec: MarketSpec) -> WireFormat:
        return self.api.formats.get(spec.symbol) or WireFormat(spec)

    # --- placing ---------------------------------------------------------------------
    async def place(self, request: web.Request, s: Signed) -> Any:
        spec = self.facade.spec(s.params)
        order = new_order(s.params, spec.symbol)
        signature: str | None = s.signature
        if not script_guard_covers(s):
            await guard(self.api, s)  # a long recvWindow: remembered longer than the script would
            signature = None
        try:
            resp = await self.api.orders.place_order(request, s.user_id, order.body, signature)
        except GuardChecked as checked:
            raise from_native(checked.error, market_order=order.is_market) from None
        except CryptexError as err:
            raise from_native(err, market_order=order.is_market) from None
        doc = native_answer(resp, market_order=order.is_market)
        if doc.get("duplicate"):
            raise BinanceError(-2010, "Duplicate order sent.")
        return formats.placed(doc["order"], doc.get("fills") or [], self._fmt(spec), order.resp_type,
                              self._stp(spec))

    async def test_order(self, request: web.Request, s: Signed) -> Any:
        """Validated exactly as a real order (market state included); nothing is queued."""
        spec = self.facade.spec(s.params)
        order = new_order(s.params, spec.symbol)
        body = order.body
        try:
            buy_by_qty = body["type"] == "market" and body["side"] == "buy" and "quantity" in body
            asks = await self.api.orders.visible_asks(spec) if buy_by_qty else None
            validated = validate_order(body, spec, s.user_id, asks)
            self.api.check_state(spec, cancelling=False, post_only=validated.command.post_only)
        except CryptexError as err:
            raise from_native(err, market_order=order.is_market) from None
        return {}

    # --- looking up ------------------------------------------------------------------
    async def _resolve(self, s: Signed, spec: MarketSpec, cancelling: bool) -> OrderRecord:
        order_id, coid = s.params.get("orderId"), s.params.get("origClientOrderId")
        if not order_id and not coid:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        ref: dict[str, Any] = {"orderId": order_id} if order_id else {"clientOrderId": coid}
        try:
            rec = await self.api.orders.resolve_order(s.user_id, ref)
        except CryptexError as err:
            raise from_native(err, cancelling=cancelling) from None
        if rec.market != spec.symbol:
            raise from_native(CryptexError(ErrorCode.ORDER_NOT_FOUND, "other symbol"), cancelling=cancelling)
        return rec

    async def get_order(self, request: web.Request, s: Signed) -> Any:
        spec = self.facade.spec(s.params)
        rec = await self._resolve(s, spec, cancelling=False)
        return formats.queried(self.api.order_wire(rec), self._fmt(spec), self._stp(spec))

    async def open_orders(self, request: web.Request, s: Signed) -> Any:
        """The caller's open orders (the first 1000), of one symbol or all."""
        symbol = self.facade.spec(s.params).symbol if s.params.get("symbol") else None
        out = []
        for rec in await self.api.orders.open_order_records(s.user_id, symbol):
            spec = self.api.markets.get(rec.market)
            if spec is not None:
                out.append(formats.queried(self.api.order_wire(rec), self._fmt(spec), self._stp(spec)))
        return out

    # --- cancelling ------------------------------------------------------------------
    async def cancel(self, request: web.Request, s: Signed) -> Any:
        spec = self.facade.spec(s.params)
        rec = await self._resolve(s, spec, cancelling=True)
        await guard(self.api, s)
        try:
            resp = await self.api.orders.cancel_order(request, s.user_id, {"orderId": rec.order_id})
        except CryptexError as err:
            raise from_native(err, cancelling=True) from None
        doc = native_answer(resp, cancelling=True)
        return formats.cancelled(doc["order"], self._fmt(spec), self._stp(spec), s.params.get("origClientOrderId"),
                                 int(time.time() * 1000))

    async def cancel_all(self, request: web.Request, s: Signed) -> Any:
        if not s.params.get("symbol"):
            raise mandatory("symbol")
        spec = self.facade.spec(s.params)
        await guard(self.api, s)
        try:
            resp = await self.api.orders.cancel_all(request, s.user_id, {"market": spec.symbol})
        except CryptexError as err:
            raise from_native(err, cancelling=True) from None
        doc = native_answer(resp, cancelling=True)
        now, fmt, stp = int(time.time() * 1000), self._fmt(spec), self._stp(spec)
        return [formats.cancelled(o, fmt, stp, None, now) for o in doc["cancelled"]]

    # --- the account -----------------------------------------------------------------
    async def account(self, request: web.Request, s: Signed) -> Any:
        """Balances as `free`/`locked`; commissions are the markets' fees (the highest when
        markets differ), in Binance's two forms (bps and fraction)."""
        api = self.api
        held = await api.ledger.balances(s.user_id)
        balances = [{"asset": asset, "free": format_units(held[asset]["available"], api.asset_decimals.get(asset, 0)),
                     "locked": format_units(held[asset]["locked"], api.asset_decimals.get(asset, 0))}
                    for asset in sorted(held)]
        maker = max((m.maker_fee_bps for m in api.markets.values()), default=0)
        taker = max((m.taker_fee_bps for m in api.markets.values()), default=0)
        rates = {"maker": _fraction(maker), "taker": _fraction(taker), "buyer": "0.00000000",
                 "seller": "0.00000000"}
        return {"makerCommission": maker, "takerCommission": taker, "buyerCommission": 0, "sellerCommission": 0,
                "commissionRates": rates, "canTrade": True, "canWithdraw": False, "canDeposit": False,
                "brokered": False, "requireSelfTradePrevention": False, "preventSor": False,
                "updateTime": int(time.time() * 1000), "accountType": "SPOT", "balances": balances,
                "permissions": ["SPOT"], "uid": int(s.user_id) if s.user_id.isdigit() else 0}


def _fraction(bps: int) -> str:
    return f"0.{bps:04d}0000"  # bps <= MAX_FEE_BPS (1000)
