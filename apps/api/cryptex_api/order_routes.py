"""Signed account routes: place, cancel and look up orders, balances, order and fill history.

Invariants: bad input never reaches a stream and never changes a balance (validation and
the funds check happen before or inside the one atomic R1 call, which also checks and sets
the replay guard); an accepted order costs two Redis round trips, R1 in the user's bucket
then the hand-over to its market (docs/decisions/0013), and is answered 200 with its result
or 202 when the engine's reply does not arrive within `reply_timeout_ms` (or the hand-over
failed: the reconciler hands the order over from the outbox); another user's order is
"not found" to the caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from cryptex_api import history as history_queries
from cryptex_api import params
from cryptex_api.orders import CLIENT_ORDER_ID, cancel_command_json, market_field, validate_order
from cryptex_api.replies import Reply
from cryptex_api.responses import GuardChecked, json_response
from cryptex_common import keys, metrics, resp_cluster
from cryptex_common.auth import REPLAY_GUARD_MS
from cryptex_common.depth import read_depth
from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.ledger import Enqueued, enqueue_call, enqueued, handed, handover_call, ledger_script_source
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import TERMINAL_STATUSES, CancelAllCommand, OrderRecord, ReplyType
from cryptex_common.money import format_units, to_steps
from cryptex_common.resp import as_text
from cryptex_common.wire import WireFormat

if TYPE_CHECKING:
    from cryptex_api.app import Api

log = logging.getLogger("cryptex.api")
VISIBLE_ASK_LEVELS = 1000  # how deep a market buy by quantity looks to price its lock


class OrderHandlers:
    """The signed account handlers, `(request, user_id, body)`; one per `Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.replies = api.replies
        self._enqueue_source = ledger_script_source("enqueue_order.lua")
        self._enqueue_sha = hashlib.sha1(self._enqueue_source.encode()).hexdigest()
        self._handover_source = ledger_script_source("handover.lua")
        self._handover_sha = hashlib.sha1(self._handover_source.encode()).hexdigest()
        # per-market metric children, labels resolved once (labels() is slow per order)
        self.order_metrics: dict[str, tuple[Any, Any, Any]] = {}

    def init_metrics(self, symbols: Any) -> None:
        """Resolve the per-market order metric children (zero series before any order)."""
        metrics.REDIS_WAIT_SHORTFALL.labels("api")
        for symbol in symbols:
            self._order_metrics(symbol)

    def _order_metrics(self, symbol: str) -> tuple[Any, Any, Any]:
        children = (metrics.ORDERS_ACCEPTED.labels(market=symbol), metrics.ORDER_ROUNDTRIP.labels(market=symbol),
                    metrics.ORDER_REPLY_TIMEOUTS.labels(market=symbol))
        self.order_metrics[symbol] = children
        return children

    # --- placing ---------------------------------------------------------------------
    async def visible_asks(self, spec: MarketSpec) -> list[tuple[int, int]]:
        """The best VISIBLE_ASK_LEVELS published ask levels as (price ticks, quantity lots),
        best first."""
        book = await read_depth(self.api.redis, spec.symbol, VISIBLE_ASK_LEVELS)
        if book is None:
            return []
        tick, lot = Decimal(spec.tick_size), Decimal(spec.lot_size)
        return [(to_steps(Decimal(p), tick, "price", ErrorCode.OFF_TICK),
                 to_steps(Decimal(q), lot, "quantity", ErrorCode.OFF_LOT))
                for p, q in book["asks"]]

    async def place_order(self, request: web.Request, user_id: str, body: dict[str, Any],
                          signature: str | None = None) -> web.Response:
        """Validate, then lock funds and queue in one script call, which also checks and sets
        the replay guard of `signature` (None: the caller already did). Raising before the
        script has set the guard leaves setting it to the caller (`order_route`)."""
        api = self.api
        spec = api.market(market_field(body))
        symbol = spec.symbol
        try:
            is_market_buy_by_qty = (str(body.get("type", "")).lower() == "market"
                                    and body.get("quoteQuantity") is None
                                    and str(body.get("kind", body.get("side", ""))).lower() == "buy")
            asks = await self.visible_asks(spec) if is_market_buy_by_qty else None
            order = validate_order(body, spec, user_id, asks)
            api.check_state(spec, cancelling=False, post_only=order.command.post_only)
        except CryptexError as err:
            metrics.ORDERS_REJECTED.labels(market=symbol, reason=err.code.value).inc()
            raise
        command = order.command
        request_id, fut = self.replies.new_request()
        started = time.perf_counter()
        command_json = command.wire_json(self.replies.channel, request_id, request.get("correlation_id"))
        try:
            enq = await self.enqueue(
                symbol=symbol, user_id=user_id, lock_asset=order.lock_asset, lock_units=order.lock_units,
                command_json=command_json, record_tail_json=command.record_tail(symbol),
                client_order_id=command.client_order_id, signature=signature, replay_guard_ms=REPLAY_GUARD_MS,
            )
        except BaseException:
            self.replies.forget(request_id)
            raise
        if enq.status != "ok" or enq.order_id is None:
            self.replies.forget(request_id)
            return await self._not_queued(enq, user_id, signature, symbol, order.lock_asset)
        accepted, roundtrip, timeouts = self.order_metrics.get(symbol) or self._order_metrics(symbol)
        accepted.inc()
        queued = await self.hand_over(symbol, enq.order_id, user_id, order.lock_asset, order.lock_units,
                                      command_json, enq.outbox_id or "")
        if log.isEnabledFor(logging.INFO):
            log.info("order queued", extra={"market": symbol, "orderId": enq.order_id, "handedOver": queued,
                                            "userId": user_id, "correlationId": request.get("correlation_id")})
        if queued:
            reply = await api.wait_reply(fut, request_id)
        else:  # no reply will come for it now: the relay queues it later
            self.replies.forget(request_id)
            reply = None
        if reply is None:
            timeouts.inc()
            return json_response({"orderId": str(enq.order_id), "status": "accepted",
                                  "message": "queued; the engine has not answered yet"}, 202)
        roundtrip.observe(time.perf_counter() - started)
        return self.reply_response(reply, spec)

    async def _not_queued(self, enq: Enqueued, user_id: str, signature: str | None, symbol: str,
                          lock_asset: str) -> web.Response:
        """The answer to an enqueue that queued nothing: replayed signature, duplicate
        clientOrderId (200 with the stored order) or insufficient funds. Errors raised here
        have had their replay guard checked (GuardChecked)."""
        if enq.status == "replayed":
            raise GuardChecked(CryptexError(ErrorCode.REPLAYED_REQUEST, "this signed request was already used",
                                            "X-CX-SIGN"))
        if signature is not None:
            await self.api.auth.guard_replay(user_id, signature)  # raises REPLAYED_REQUEST when it was used
        if enq.status == "dup" and enq.order_id is not None:
            rec, _ = await self.api.load_order(enq.order_id)
            return json_response({"duplicate": True, "order": self.api.order_wire(rec) if rec else {
                "orderId": str(enq.order_id)}})
        metrics.ORDERS_REJECTED.labels(market=symbol, reason="INSUFFICIENT_FUNDS").inc()
        raise GuardChecked(CryptexError(ErrorCode.INSUFFICIENT_FUNDS,
                                        f"insufficient {lock_asset} available", "quantity"))

    async def enqueue(self, **call: Any) -> Enqueued:
        """R1 (Ledger.enqueue_order), over the pipelined order connection when there is one."""
        order_redis = self.api.order_redis
        if order_redis is None:
            return await self.api.ledger.enqueue_order(**call)
        script = enqueue_call(**call)
        return enqueued(await order_redis.evalsha(self._enqueue_sha, self._enqueue_source,
                                                  script.keys, script.args))

    async def hand_over(self, symbol: str, order_id: int, user_id: str, lock_asset: str, lock_units: int,
                        command_json: bytes, outbox_id: str) -> bool:
        """Queue a locked order on its market (at most once); False when Redis failed
        first: the order stays in its bucket's outbox, which the reconciler hands over."""
        call = handover_call(symbol=symbol, order_id=order_id, user_id=user_id, lock_asset=lock_asset,
                             lock_units=lock_units, command_json=command_json, outbox_id=outbox_id)
        try:
            order_redis = self.api.order_redis
            if order_redis is None:
                await self.api.ledger.hand_over(call)
            else:
                handed(await order_redis.evalsha(self._handover_sha, self._handover_source, call.keys, call.args))
            await self.wait_replicas(keys.outbox_stream(keys.user_tag(user_id)), call.keys[0])
        except RedisError as exc:
            metrics.ORDER_HANDOVER_FAILURES.inc()
            log.warning("hand-over failed; the reconciler will retry it",
                        extra={"market": symbol, "orderId": order_id, "error": str(exc)})
            return False
        return True

    async def wait_replicas(self, *route_keys: str) -> None:
        """With CRYPTEX_REDIS_WAIT_REPLICAS, WAIT on the nodes of `route_keys` (R1's and the
        hand-over's) before the order is answered, so a failover cannot lose it."""
        settings, order_redis = self.api.settings, self.api.order_redis
        n = settings.redis_wait_replicas
        if not n or order_redis is None:
            return
        acks = await asyncio.gather(*(resp_cluster.wait_replicas(order_redis, key, n, settings.redis_wait_timeout_ms)
                                      for key in route_keys))
        if min(acks) < n:
            metrics.REDIS_WAIT_SHORTFALL.labels("api").inc()

    def reply_response(self, reply: Reply, spec: MarketSpec) -> web.Response:
        """The engine's reply as the HTTP answer: a rejection with its code's status, else
        200 with the order and its fills (or the cancelled orders)."""
        fmt = self.api.formats.get(spec.symbol) or WireFormat(spec)
        body: dict[str, Any] = {}
        order = reply.get("order")
        if order is not None:
            body["order"] = fmt.order_dict(order)
        kind = reply["type"]
        if kind == ReplyType.REJECTED:
            code = reply.get("code") or "REJECTED"
            metrics.ORDERS_REJECTED.labels(market=spec.symbol, reason=code).inc()
            err = CryptexError(ErrorCode(code) if code in ErrorCode.__members__ else ErrorCode.CONFLICT,
                               reply.get("message") or code)
            return json_response({**err.to_wire(), **body}, err.http_status)
        if kind == ReplyType.ORDERS_CANCELLED:
            return json_response({"cancelled": [fmt.order_dict(o) for o in reply.get("orders") or ()]})
        body["fills"] = [fmt.fill_dict(f) for f in reply.get("fills") or ()]
        return json_response(body)

    # --- cancelling ------------------------------------------------------------------
    async def cancel_order(self, request: web.Request, user_id: str, body: dict[str, Any]) -> web.Response:
        """The order record read as a plain dict and the command built by orjson (no
        pydantic), both over the order connection."""
        api = self.api
        ref = params.order_ref({**request.query, **body}, CLIENT_ORDER_ID)
        order_id = ref.order_id
        if order_id is None:
            found = await api.command("GET", keys.client_order_key(user_id, str(ref.client_order_id)))
            if not found:
                raise CryptexError(ErrorCode.ORDER_NOT_FOUND, "no order with this clientOrderId", "clientOrderId")
            order_id = int(as_text(found))
        raw = await api.command("HGET", keys.order_key(order_id), "r")
        rec = orjson.loads(raw) if raw else None
        if rec is None or rec.get("userId") != user_id:  # another user's order is "not found" to you
            raise CryptexError(ErrorCode.ORDER_NOT_FOUND, f"order {order_id} not found", "orderId")
        order_id = rec["orderId"]
        if rec["status"] in TERMINAL_STATUSES:
            raise CryptexError(ErrorCode.ORDER_NOT_OPEN, f"order {order_id} is {rec['status']}", "orderId")
        spec = api.market(rec["market"])
        api.check_state(spec, cancelling=True)
        request_id, fut = self.replies.new_request()
        command = cancel_command_json(user_id, order_id, self.replies.channel, request_id,
                                      request.get("correlation_id"))
        try:
            await api.command("XADD", keys.commands_stream(spec.symbol), "*", "c", command)
        except BaseException:
            self.replies.forget(request_id)
            raise
        reply = await api.wait_reply(fut, request_id)
        if reply is None:
            return json_response({"orderId": str(order_id), "status": "cancel_requested"}, 202)
        if reply["type"] == ReplyType.REJECTED:  # filled or cancelled while the cancel was queued
            raise CryptexError(ErrorCode.ORDER_NOT_OPEN, f"order {order_id} is no longer open", "orderId")
        return self.reply_response(reply, spec)

    async def cancel_all(self, request: web.Request, user_id: str, body: dict[str, Any]) -> web.Response:
        """Cancel-all commands to every market asked (all markets when none), queued before
        any reply is awaited; markets that did not answer in time are `pendingMarkets` (202)."""
        api = self.api
        raw = request.query.get("market") or body.get("market")
        specs = [api.market(raw)] if raw is not None else list(api.markets.values())
        waits = []
        for spec in specs:
            api.check_state(spec, cancelling=True)
            request_id, fut = self.replies.new_request()
            cmd = CancelAllCommand(userId=user_id, replyTo=self.replies.channel, requestId=request_id)
            await api.redis.xadd(keys.commands_stream(spec.symbol), {"c": cmd.model_dump_json(by_alias=True)})
            waits.append((spec, request_id, fut))
        cancelled: list[dict[str, Any]] = []
        pending = []
        for spec, request_id, fut in waits:
            reply = await api.wait_reply(fut, request_id)
            if reply is None:
                pending.append(spec.symbol)
                continue
            cancelled.extend(api.formats[spec.symbol].order_dict(o) for o in reply.get("orders") or ())
        return json_response({"cancelled": cancelled, "pendingMarkets": pending},
                             202 if pending else 200)

    # --- reads -----------------------------------------------------------------------
    async def resolve_order(self, user_id: str, query: Any) -> OrderRecord:
        """The caller's order by orderId or clientOrderId; ORDER_NOT_FOUND otherwise."""
        ref = params.order_ref(query, CLIENT_ORDER_ID)
        order_id = ref.order_id
        if order_id is None:
            found = await self.api.redis.get(keys.client_order_key(user_id, str(ref.client_order_id)))
            if not found:
                raise CryptexError(ErrorCode.ORDER_NOT_FOUND, "no order with this clientOrderId", "clientOrderId")
            order_id = int(as_text(found))
        rec, owner = await self.api.load_order(order_id)
        if rec is None or owner != user_id:  # another user's order is "not found" to you
            raise CryptexError(ErrorCode.ORDER_NOT_FOUND, f"order {order_id} not found", "orderId")
        return rec

    async def get_order(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        rec = await self.resolve_order(user_id, dict(request.query))
        return json_response(self.api.order_wire(rec))

    async def open_order_records(self, user_id: str, symbol: str | None) -> list[OrderRecord]:
        """The user's open orders (the first 1000), of one market or all."""
        redis = self.api.redis
        ids = await redis.zrange(keys.open_orders_key(user_id), 0, 999)
        pipe = redis.pipeline(transaction=False)
        for order_id in ids:
            pipe.hget(keys.order_key(as_text(order_id)), "r")
        out = []
        for raw_rec in await pipe.execute():
            if raw_rec:
                rec = OrderRecord.model_validate_json(raw_rec)
                if rec.status not in TERMINAL_STATUSES and (symbol is None or rec.market == symbol):
                    out.append(rec)
        return out

    async def open_orders(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        """The caller's open orders (the first 1000), optionally of one market."""
        raw = request.query.get("market")
        symbol = self.api.market(raw).symbol if raw else None
        return json_response([self.api.order_wire(rec) for rec in await self.open_order_records(user_id, symbol)])

    async def balances(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        held = await self.api.ledger.balances(user_id)
        out = []
        for asset in sorted(held):
            dec = self.api.asset_decimals.get(asset, 0)
            out.append({"asset": asset, "available": format_units(held[asset]["available"], dec),
                        "locked": format_units(held[asset]["locked"], dec)})
        return json_response(out)

    async def orders_history(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        q = history_queries.parse_orders_history_query(request.query)
        market = self.api.market(q.market).symbol if q.market else None
        return json_response(await self.api.query_history(lambda h: h.orders_history(
            user_id, market, q.start_ms, q.end_ms, q.limit, q.before_order_id)))

    async def fills(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        q = history_queries.parse_fills_query(request.query)
        market = self.api.market(q.market).symbol if q.market else None
        return json_response(await self.api.query_history(lambda h: h.fills(
            user_id, market, q.start_ms, q.end_ms, q.limit, q.from_trade_id)))
