"""The REST API (aiohttp): thin handlers around validation (orders.py), the ledger scripts
and the reply waiter.

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
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cryptex_api import history as history_queries
from cryptex_api import params
from cryptex_api.openapi import OPENAPI
from cryptex_api.orders import CLIENT_ORDER_ID, cancel_command_json, market_field, validate_order
from cryptex_api.ratelimit import TokenBuckets
from cryptex_api.replies import Reply, ReplyWaiter
from cryptex_api.settings import ApiSettings
from cryptex_api.transfers import validate_transfer
from cryptex_common import auth, keys, metrics, registry, runtime
from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.ledger import Enqueued, Ledger, enqueue_call, enqueued, ledger_script_source
from cryptex_common.markets import MarketSpec, MarketState, normalize_symbol
from cryptex_common.messages import (
    TERMINAL_STATUSES,
    CancelAllCommand,
    OrderRecord,
    ReplyType,
)
from cryptex_common.money import format_units, parse_json, to_steps
from cryptex_common.resp import RespClient
from cryptex_common.wire import WireFormat

log = logging.getLogger("cryptex.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/api/v1"
STATIC_DIR = Path(__file__).parent / "static"
API_KEY_CACHE_TTL_S = 60.0  # a key deleted or re-pointed in Redis stops working within this
API_KEY_CACHE_MAX = 100_000
REPLAY_GUARD_MS = 2 * auth.TIMESTAMP_WINDOW_MS


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=headers)


def error_response(err: CryptexError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(err.to_wire(), err.http_status, headers)


class Api:
    """Holds the dependencies the handlers share; one per process."""

    def __init__(self, settings: ApiSettings, redis: Redis, history: Any = None,
                 public_redis: Redis | None = None, order_redis: RespClient | None = None) -> None:
        self.settings = settings
        self.redis = redis  # orders, cancels, balances, admin: authenticated callers only
        # the enqueue script's pipelined connection (cryptex_common.resp); None: via `redis`
        self.order_redis = order_redis
        self._enqueue_source = ledger_script_source("enqueue_order.lua")
        self._enqueue_sha = hashlib.sha1(self._enqueue_source.encode()).hexdigest()
        self.public_redis = public_redis or redis  # public reads: never crowd out the above
        self.ledger = Ledger(redis)
        self.replies = ReplyWaiter(redis, settings.instance_id,
                                   settings.redis_url if order_redis is not None else None)
        self.markets: dict[str, MarketSpec] = {}
        self.formats: dict[str, WireFormat] = {}
        self.asset_decimals: dict[str, int] = {}
        # apiKey -> (userId, secret, cached until (monotonic s)): bounded, short-lived
        self.api_keys: dict[str, tuple[str, bytes, float]] = {}
        self._market_names: dict[str, MarketSpec] = {}
        # per-market metric children, labels resolved once (issue 12)
        self.order_metrics: dict[str, tuple[Any, Any, Any]] = {}
        self.buckets = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.public_ips = TokenBuckets(settings.public_rate_limit_per_s, settings.public_rate_limit_burst)
        self.admin_ips = TokenBuckets(settings.admin_rate_limit_per_s, settings.admin_rate_limit_burst)
        self.key_misses = TokenBuckets(settings.public_rate_limit_per_s, settings.public_rate_limit_burst)
        self.history = history
        self._markets_task: asyncio.Task[None] | None = None

    # --- markets ---------------------------------------------------------------------
    async def reload_markets(self) -> None:
        self.markets = await registry.load_markets(self.redis)
        self.formats = {s: WireFormat(spec) for s, spec in self.markets.items()}
        self._market_names = {name: spec for symbol, spec in self.markets.items()
                               for name in (symbol, symbol.lower(), symbol.replace("/", "_"),
                                            symbol.replace("/", "_").lower())}
        for spec in self.markets.values():
            self.asset_decimals[spec.base_asset] = spec.base_decimals
            self.asset_decimals[spec.quote_asset] = spec.quote_decimals

        if self.history is not None:
            self.history.markets = self.markets
        self._init_metrics()

    def _init_metrics(self) -> None:
        """Zero series for the label values this API owns, so rules and dashboards see the
        metrics before the first event (docs/observability.md)."""
        for symbol in self.markets:
            self.order_metrics[symbol] = (metrics.ORDERS_ACCEPTED.labels(market=symbol),
                                          metrics.ORDER_ROUNDTRIP.labels(market=symbol),
                                          metrics.ORDER_REPLY_TIMEOUTS.labels(market=symbol))
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

    # --- auth ------------------------------------------------------------------------
    def limit_address(self, request: web.Request, buckets: TokenBuckets) -> None:
        """Per client address limit for unauthenticated and admin routes (429)."""
        wait_s = buckets.take(request.remote or "unknown")
        if wait_s > 0:
            raise RateLimited(wait_s, "rate limit exceeded for this client address")

    async def authenticate(self, request: web.Request, body: bytes) -> str:
        """The signed request's user: signature checked, replay guard set, rate limited."""
        user_id, signed = await self.verify_signature(request, body)
        await self.guard_replay(signed.signature)
        self.take_rate(signed.api_key)
        return user_id

    async def verify_signature(self, request: web.Request, body: bytes) -> tuple[str, params.SignedHeaders]:
        """The user whose key signed this request (401 otherwise); no Redis call when the
        key is cached. The replay guard and the rate limit are the caller's next steps."""
        signed = params.signed_headers(request.headers)
        if not auth.timestamp_fresh(signed.ts_ms, int(time.time() * 1000)):
            raise CryptexError(ErrorCode.STALE_TIMESTAMP, "X-CX-TS is outside the 5 s window", "X-CX-TS")
        cached = self.api_keys.get(signed.api_key)
        if cached is None or cached[2] < time.monotonic():
            cached = await self.lookup_key(request, signed.api_key)
        user_id, secret, _ = cached
        payload = b"%s%s%s%s" % (signed.ts_text.encode(), request.method.encode(), request.raw_path.encode(), body)
        if not hmac.compare_digest(hmac.digest(secret, payload, "sha256").hex(), signed.signature):
            raise CryptexError(ErrorCode.BAD_SIGNATURE, "X-CX-SIGN does not match the request", "X-CX-SIGN")
        return user_id, signed

    async def command(self, *args: Any) -> Any:
        """One Redis command on the order path: over the pipelined connection when there is
        one (replies as hiredis gives them: bytes, ints, None), else through `redis`."""
        if self.order_redis is not None:
            return await self.order_redis.call(*args)
        return await self.redis.execute_command(*args)

    async def guard_replay(self, signature: str) -> None:
        """Remember the signature for REPLAY_GUARD_MS; 401 REPLAYED_REQUEST if it was used."""
        fresh = await self.command("SET", keys.signature_key(signature), 1, "NX", "PX", REPLAY_GUARD_MS)
        if not fresh:
            raise CryptexError(ErrorCode.REPLAYED_REQUEST, "this signed request was already used", "X-CX-SIGN")

    def take_rate(self, api_key: str) -> None:
        wait_s = self.buckets.take(api_key)
        if wait_s > 0:
            raise RateLimited(wait_s)

    async def lookup_key(self, request: web.Request, api_key: str) -> tuple[str, bytes, float]:
        """An API key not yet cached. Unknown keys count against the caller's address
        (`key_misses`, the public rate): an address past it is answered 429 without a
        lookup, so random keys cannot keep the order pool busy."""
        address = request.remote or "unknown"
        wait_s = self.key_misses.waiting(address)
        if wait_s > 0:
            raise RateLimited(wait_s, "too many unknown API keys from this client address")
        user_id = await self.redis.get(keys.api_key_key(api_key))
        secret = await self.redis.hget(keys.user_key(_s(user_id)), "apiSecret") if user_id else None
        if not user_id or not secret:
            self.key_misses.take(address)
            raise CryptexError(ErrorCode.UNAUTHORIZED, "unknown API key", "X-CX-KEY")
        user = (_s(user_id), _s(secret).encode(), time.monotonic() + API_KEY_CACHE_TTL_S)
        if len(self.api_keys) >= API_KEY_CACHE_MAX:
            self.api_keys.clear()
        self.api_keys[api_key] = user
        return user

    def check_admin(self, request: web.Request) -> None:
        self.limit_address(request, self.admin_ips)
        token = self.settings.admin_token
        if not token:
            raise CryptexError(ErrorCode.FORBIDDEN, "admin routes are disabled (CRYPTEX_ADMIN_TOKEN unset)")
        given = params.bearer_token(request.headers)
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise CryptexError(ErrorCode.UNAUTHORIZED, "admin bearer token required", "Authorization")

    # --- helpers -----------------------------------------------------------------------
    async def read_body(self, request: web.Request) -> bytes:
        """The whole body, or 408 when it does not arrive within body_timeout_s."""
        if request.content.is_eof():  # it came with the headers: no timer needed
            return await request.read()
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise CryptexError(ErrorCode.REQUEST_TIMEOUT, "request body not received in time", "body") from None

    async def read_json(self, request: web.Request, body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise CryptexError(ErrorCode.INVALID_JSON, "body must be a JSON object", "body")
        return doc

    async def load_order(self, order_id: int) -> tuple[OrderRecord | None, str | None]:
        raw = await self.redis.hget(keys.order_key(order_id), "r")
        if not raw:
            return None, None
        rec = OrderRecord.model_validate_json(raw)
        return rec, rec.user_id

    def order_wire(self, rec: OrderRecord) -> dict[str, Any]:
        fmt = self.formats.get(rec.market)
        return fmt.order(rec) if fmt else rec.model_dump(by_alias=True, mode="json")

    async def wait_reply(self, fut: asyncio.Future[Reply | None], request_id: str) -> Reply | None:
        return await self.replies.wait(request_id, fut, self.settings.reply_timeout_ms / 1000)

    def check_state(self, spec: MarketSpec, *, cancelling: bool, post_only: bool = False) -> None:
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

    async def visible_asks(self, spec: MarketSpec) -> list[tuple[int, int]]:
        raw = await self.redis.get(keys.depth_key(spec.symbol))
        if not raw:
            return []
        tick, lot = Decimal(spec.tick_size), Decimal(spec.lot_size)
        return [(to_steps(Decimal(p), tick, "price", ErrorCode.OFF_TICK),
                 to_steps(Decimal(q), lot, "quantity", ErrorCode.OFF_LOT))
                for p, q in orjson.loads(raw)["asks"]]

    # --- private routes ------------------------------------------------------------------
    async def place_order(self, request: web.Request, user_id: str, body: dict[str, Any],
                          signature: str | None = None) -> web.Response:
        """Validate, then lock funds and queue in one script call, which also checks and sets
        the replay guard of `signature` (None: the caller already did). Raising before the
        script has set the guard leaves setting it to the caller (`order_route`)."""
        spec = self.market(market_field(body))
        symbol = spec.symbol
        try:
            is_market_buy_by_qty = (str(body.get("type", "")).lower() == "market"
                                    and body.get("quoteQuantity") is None
                                    and str(body.get("kind", body.get("side", ""))).lower() == "buy")
            asks = await self.visible_asks(spec) if is_market_buy_by_qty else None
            order = validate_order(body, spec, user_id, asks)
            self.check_state(spec, cancelling=False, post_only=order.command.post_only)
        except CryptexError as err:
            metrics.ORDERS_REJECTED.labels(market=symbol, reason=err.code.value).inc()
            raise
        command = order.command
        request_id, fut = self.replies.new_request()
        started = time.perf_counter()
        try:
            enq = await self.enqueue(
                symbol=symbol, user_id=user_id, lock_asset=order.lock_asset,
                lock_units=order.lock_units,
                command_json=command.wire_json(self.replies.channel, request_id, request.get("correlation_id")),
                record_tail_json=command.record_tail(symbol), client_order_id=command.client_order_id,
                signature=signature, replay_guard_ms=REPLAY_GUARD_MS,
            )
        except BaseException:
            self.replies.forget(request_id)
            raise
        if enq.status != "ok":
            self.replies.forget(request_id)
            if enq.status == "replayed":
                raise GuardChecked(CryptexError(ErrorCode.REPLAYED_REQUEST, "this signed request was already used",
                                                "X-CX-SIGN"))
            if signature is not None:
                await self.guard_replay(signature)  # raises REPLAYED_REQUEST when it was used
            if enq.status == "dup" and enq.order_id is not None:
                rec, _ = await self.load_order(enq.order_id)
                return json_response({"duplicate": True, "order": self.order_wire(rec) if rec else {
                    "orderId": str(enq.order_id)}})
            metrics.ORDERS_REJECTED.labels(market=symbol, reason="INSUFFICIENT_FUNDS").inc()
            raise GuardChecked(CryptexError(ErrorCode.INSUFFICIENT_FUNDS,
                                            f"insufficient {order.lock_asset} available", "quantity"))
        accepted, roundtrip, timeouts = self.order_metrics.get(symbol) or self._order_metrics(symbol)
        accepted.inc()
        if log.isEnabledFor(logging.INFO):
            log.info("order queued", extra={"market": symbol, "orderId": enq.order_id,
                                            "userId": user_id, "correlationId": request.get("correlation_id")})
        reply = await self.wait_reply(fut, request_id)
        if reply is None:
            timeouts.inc()
            return json_response({"orderId": str(enq.order_id), "status": "accepted",
                                  "message": "queued; the engine has not answered yet"}, 202)
        roundtrip.observe(time.perf_counter() - started)
        return self.reply_response(reply, spec)

    async def enqueue(self, **call: Any) -> Enqueued:
        """Ledger.enqueue_order, over the pipelined order connection when there is one."""
        if self.order_redis is None:
            return await self.ledger.enqueue_order(**call)
        script = enqueue_call(**call)
        return enqueued(await self.order_redis.evalsha(self._enqueue_sha, self._enqueue_source,
                                                       script.keys, script.args))

    def _order_metrics(self, symbol: str) -> tuple[Any, Any, Any]:
        children = (metrics.ORDERS_ACCEPTED.labels(market=symbol), metrics.ORDER_ROUNDTRIP.labels(market=symbol),
                    metrics.ORDER_REPLY_TIMEOUTS.labels(market=symbol))
        self.order_metrics[symbol] = children
        return children

    def reply_response(self, reply: Reply, spec: MarketSpec) -> web.Response:
        fmt = self.formats.get(spec.symbol) or WireFormat(spec)
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

    async def resolve_order(self, user_id: str, query: Any) -> OrderRecord:
        ref = params.order_ref(query, CLIENT_ORDER_ID)
        order_id = ref.order_id
        if order_id is None:
            found = await self.redis.get(keys.client_order_key(user_id, str(ref.client_order_id)))
            if not found:
                raise CryptexError(ErrorCode.ORDER_NOT_FOUND, "no order with this clientOrderId", "clientOrderId")
            order_id = int(_s(found))
        rec, owner = await self.load_order(order_id)
        if rec is None or owner != user_id:  # another user's order is "not found" to you
            raise CryptexError(ErrorCode.ORDER_NOT_FOUND, f"order {order_id} not found", "orderId")
        return rec

    async def cancel_order(self, request: web.Request, user_id: str, body: dict[str, Any]) -> web.Response:
        """The order record read as a plain dict and the command built by orjson (no
        pydantic), both over the order connection (issue 12)."""
        ref = params.order_ref({**request.query, **body}, CLIENT_ORDER_ID)
        order_id = ref.order_id
        if order_id is None:
            found = await self.command("GET", keys.client_order_key(user_id, str(ref.client_order_id)))
            if not found:
                raise CryptexError(ErrorCode.ORDER_NOT_FOUND, "no order with this clientOrderId", "clientOrderId")
            order_id = int(_s(found))
        raw = await self.command("HGET", keys.order_key(order_id), "r")
        rec = orjson.loads(raw) if raw else None
        if rec is None or rec.get("userId") != user_id:  # another user's order is "not found" to you
            raise CryptexError(ErrorCode.ORDER_NOT_FOUND, f"order {order_id} not found", "orderId")
        order_id = rec["orderId"]
        if rec["status"] in TERMINAL_STATUSES:
            raise CryptexError(ErrorCode.ORDER_NOT_OPEN, f"order {order_id} is {rec['status']}", "orderId")
        spec = self.market(rec["market"])
        self.check_state(spec, cancelling=True)
        request_id, fut = self.replies.new_request()
        command = cancel_command_json(user_id, order_id, self.replies.channel, request_id,
                                      request.get("correlation_id"))
        try:
            await self.command("XADD", keys.commands_stream(spec.symbol), "*", "c", command)
        except BaseException:
            self.replies.forget(request_id)
            raise
        reply = await self.wait_reply(fut, request_id)
        if reply is None:
            return json_response({"orderId": str(order_id), "status": "cancel_requested"}, 202)
        if reply["type"] == ReplyType.REJECTED:  # filled or cancelled while the cancel was queued
            raise CryptexError(ErrorCode.ORDER_NOT_OPEN, f"order {order_id} is no longer open", "orderId")
        return self.reply_response(reply, spec)

    async def cancel_all(self, request: web.Request, user_id: str, body: dict[str, Any]) -> web.Response:
        raw = request.query.get("market") or body.get("market")
        specs = [self.market(raw)] if raw is not None else list(self.markets.values())
        waits = []
        for spec in specs:
            self.check_state(spec, cancelling=True)
            request_id, fut = self.replies.new_request()
            cmd = CancelAllCommand(userId=user_id, replyTo=self.replies.channel, requestId=request_id)
            await self.redis.xadd(keys.commands_stream(spec.symbol), {"c": cmd.model_dump_json(by_alias=True)})
            waits.append((spec, request_id, fut))
        cancelled: list[dict[str, Any]] = []
        pending = []
        for spec, request_id, fut in waits:
            reply = await self.wait_reply(fut, request_id)
            if reply is None:
                pending.append(spec.symbol)
                continue
            cancelled.extend(self.formats[spec.symbol].order_dict(o) for o in reply.get("orders") or ())
        return json_response({"cancelled": cancelled, "pendingMarkets": pending},
                             202 if pending else 200)

    async def get_order(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        rec = await self.resolve_order(user_id, dict(request.query))
        return json_response(self.order_wire(rec))

    async def open_orders(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        raw = request.query.get("market")
        symbol = self.market(raw).symbol if raw else None
        ids = await self.redis.zrange(keys.open_orders_key(user_id), 0, 999)
        pipe = self.redis.pipeline(transaction=False)
        for order_id in ids:
            pipe.hget(keys.order_key(_s(order_id)), "r")
        out = []
        for raw_rec in await pipe.execute():
            if raw_rec:
                rec = OrderRecord.model_validate_json(raw_rec)
                if rec.status not in TERMINAL_STATUSES and (symbol is None or rec.market == symbol):
                    out.append(self.order_wire(rec))
        return json_response(out)

    async def balances(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        held = await self.ledger.balances(user_id)
        out = []
        for asset in sorted(held):
            dec = self.asset_decimals.get(asset, 0)
            out.append({"asset": asset, "available": format_units(held[asset]["available"], dec),
                        "locked": format_units(held[asset]["locked"], dec)})
        return json_response(out)

    # --- admin -----------------------------------------------------------------------
    async def create_user(self, request: web.Request) -> web.Response:
        self.check_admin(request)
        user_id = str(await self.redis.incr(keys.USER_ID_COUNTER))
        api_key, secret = secrets.token_hex(16), secrets.token_hex(32)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.user_key(user_id), mapping={"apiKey": api_key, "apiSecret": secret,
                                                   "createdMs": int(time.time() * 1000)})
        pipe.set(keys.api_key_key(api_key), user_id)
        await pipe.execute()
        return json_response({"userId": user_id, "apiKey": api_key, "apiSecret": secret}, 201)

    async def move_funds(self, request: web.Request, kind: str) -> web.Response:
        self.check_admin(request)
        body = await self.read_json(request, await self.read_body(request))
        move = validate_transfer(body, self.asset_decimals)
        user_id, asset, tx_id, units = move.user_id, move.asset, move.tx_id, move.units
        if not await self.redis.exists(keys.user_key(user_id)):
            raise CryptexError(ErrorCode.NOT_FOUND, f"user {user_id} not found", "userId")
        record = {"txId": tx_id, "kind": kind, "userId": user_id, "asset": asset, "units": str(units)}
        status, stored = await self.ledger.move_funds(kind=kind, user_id=user_id, asset=asset,
                                                     units=units, tx_id=tx_id, record=record)
        if status == "insufficient":
            raise CryptexError(ErrorCode.INSUFFICIENT_FUNDS, f"insufficient {asset} available", "amount")
        if status == "dup":
            if stored != record:
                raise CryptexError(ErrorCode.CONFLICT, f"txId {tx_id} was used for a different transfer", "txId")
            return json_response({**body, "duplicate": True})
        return json_response({**body, "duplicate": False})

    # --- public (per-address limit and the public Redis pool: see public()) -----------
    async def list_markets(self, _: web.Request) -> web.Response:
        return json_response([s.to_wire() for s in sorted(self.markets.values(), key=lambda s: s.symbol)])

    async def depth(self, request: web.Request) -> web.Response:
        spec = self.market(request.query.get("market"))
        limit = params.int_param(request.query, "limit", 100, 1, 200)
        raw = await self.public_redis.get(keys.depth_key(spec.symbol))
        book: dict[str, Any] = orjson.loads(raw) if raw else {"market": spec.symbol, "lastUpdateId": 0,
                                               "bids": [], "asks": [], "ts": 0}
        book["bids"], book["asks"] = book["bids"][:limit], book["asks"][:limit]
        return json_response(book)

    async def trades(self, request: web.Request) -> web.Response:
        """Recent trades from Redis; older pages (`beforeId`) from PostgreSQL."""
        if request.query.get("beforeId") is not None:
            q = history_queries.parse_trades_query(request.query)
            spec = self.market(q.market)
            return json_response(await self._query_history(
                lambda h: h.trades(spec, q.limit, q.before_trade_id)))
        spec = self.market(request.query.get("market"))
        limit = params.int_param(request.query, "limit", 100, 1, 1000)
        raw = await self.public_redis.lrange(keys.recent_trades_key(spec.symbol), 0, limit - 1)
        return json_response([orjson.loads(t) for t in raw])

    async def ticker(self, request: web.Request) -> web.Response:
        spec = self.market(request.query.get("market"))
        raw = await self.public_redis.get(keys.ticker_key(spec.symbol))
        return json_response(orjson.loads(raw) if raw else {"market": spec.symbol, "count": 0})

    async def tickers(self, _: web.Request) -> web.Response:
        symbols = sorted(self.markets)
        raws = await self.public_redis.mget([keys.ticker_key(s) for s in symbols]) if symbols else []
        return json_response([orjson.loads(r) if r else {"market": s, "count": 0}
                              for s, r in zip(symbols, raws, strict=True)])

    async def server_time(self, _: web.Request) -> web.Response:
        return json_response({"serverTime": int(time.time() * 1000)})

    # --- history (dbproc's PostgreSQL tables) ----------------------------------------
    async def _query_history(self, query: Callable[[Any], Awaitable[Any]]) -> Any:
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

    async def klines(self, request: web.Request) -> web.Response:
        q = history_queries.parse_klines_query(request.query)
        spec = self.market(q.market)
        return json_response(await self._query_history(
            lambda h: h.klines(spec, q.interval, q.start_ms, q.end_ms, q.limit)))

    async def orders_history(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        q = history_queries.parse_orders_history_query(request.query)
        market = self.market(q.market).symbol if q.market else None
        return json_response(await self._query_history(lambda h: h.orders_history(
            user_id, market, q.start_ms, q.end_ms, q.limit, q.before_order_id)))

    async def fills(self, request: web.Request, user_id: str, _: dict[str, Any]) -> web.Response:
        q = history_queries.parse_fills_query(request.query)
        market = self.market(q.market).symbol if q.market else None
        return json_response(await self._query_history(lambda h: h.fills(
            user_id, market, q.start_ms, q.end_ms, q.limit, q.from_trade_id)))

    async def openapi(self, _: web.Request) -> web.Response:
        return json_response(OPENAPI)


class RateLimited(Exception):
    def __init__(self, retry_after_s: float, message: str = "rate limit exceeded for this API key") -> None:
        self.retry_after_s = retry_after_s
        self.message = message


class GuardChecked(Exception):
    """An order route's error raised after its replay guard was checked (set, or found
    used): `order_route` answers `error` without setting the guard again."""

    def __init__(self, error: CryptexError) -> None:
        self.error = error


def private(api: Api, handler: Callable[[web.Request, str, dict[str, Any]], Awaitable[web.Response]],
            wants_body: bool = True) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        raw = await api.read_body(request)
        user_id = await api.authenticate(request, raw)
        body = await api.read_json(request, raw) if wants_body else {}
        return await handler(request, user_id, body)
    return wrapped


def order_route(api: Api) -> Handler:
    """POST /order: the replay guard is checked and set by the enqueue script itself, so an
    accepted order costs one Redis round trip. A request refused before that (rate limit,
    bad body, market state) sets the guard here first, as `authenticate` would have: a
    replayed signature is answered REPLAYED_REQUEST whatever else is wrong with it."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        raw = await api.read_body(request)
        user_id, signed = await api.verify_signature(request, raw)
        try:
            api.take_rate(signed.api_key)
            body = await api.read_json(request, raw)
            return await api.place_order(request, user_id, body, signed.signature)
        except GuardChecked as checked:
            raise checked.error from None
        except (CryptexError, RateLimited):
            await api.guard_replay(signed.signature)
            raise
    return wrapped


def public(api: Api, handler: Handler) -> Handler:
    """An unauthenticated route: limited per client address before any work."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        api.limit_address(request, api.public_ips)
        return await handler(request)
    return wrapped


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or the error response for what it raised."""
    try:
        return await handler(request)
    except CryptexError as err:
        return error_response(err)
    except GuardChecked as checked:
        return error_response(checked.error)
    except RateLimited as rl:
        return error_response(CryptexError(ErrorCode.RATE_LIMITED, rl.message), _retry_after(rl.retry_after_s))
    except web.HTTPRequestEntityTooLarge:
        return error_response(CryptexError(ErrorCode.BODY_TOO_LARGE, "request body is too large", "body"))
    except web.HTTPNotFound:
        return error_response(CryptexError(ErrorCode.NOT_FOUND, f"no route {request.rel_url.raw_path[:200]}"))
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        return json_response({"code": "METHOD_NOT_ALLOWED", "message": f"{request.method} not allowed; use {allow}"},
                             405, {"Allow": allow})
    except (RedisError, OSError) as exc:  # Redis away or its pool busy: nothing was queued
        metrics.REDIS_ERRORS.labels(service="api").inc()
        log.warning("redis unavailable", extra={"path": request.path, "error": repr(exc)})
        return error_response(CryptexError(
            ErrorCode.ENGINE_UNAVAILABLE,
            "order store unavailable or busy; retry (with the same clientOrderId to stay idempotent)"),
            _retry_after(1))
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(CryptexError(ErrorCode.INTERNAL, "internal error"))


class _CorrelationIds:
    """16 hex digits per request: a random per-process prefix and a counter (unique, and no
    random bytes drawn per request)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._n = itertools.count(secrets.randbelow(2**31))

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._n) & 0xFFFFFFFF:08x}"


_new_correlation_id = _CorrelationIds()
# metric children by label values, resolved once (prometheus_client's labels() is slow)
_http_requests: dict[tuple[str, str, int], Any] = {}
_http_latency: dict[tuple[str, str], Any] = {}


def _count_request(route: str, method: str, status: int, seconds: float) -> None:
    counter = _http_requests.get((route, method, status))
    if counter is None:
        counter = metrics.HTTP_REQUESTS.labels(route=route, method=method, status=str(status))
        if len(_http_requests) < 10_000:
            _http_requests[(route, method, status)] = counter
    counter.inc()
    histogram = _http_latency.get((route, method))
    if histogram is None:
        histogram = metrics.HTTP_LATENCY.labels(route=route, method=method)
        if len(_http_latency) < 10_000:
            _http_latency[(route, method)] = histogram
    histogram.observe(seconds)


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    try:
        request["correlation_id"] = params.request_id(request.headers) or _new_correlation_id()
    except CryptexError as err:
        request["correlation_id"] = _new_correlation_id()
        response: web.StreamResponse = error_response(err)
    else:
        response = await _answer(request, handler)
    response.headers["X-Request-Id"] = request["correlation_id"]
    _count_request(route, request.method, response.status, time.perf_counter() - started)
    return response


async def _index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def create_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=api.settings.max_body_bytes)
    r = app.router
    r.add_post(f"{PREFIX}/order", order_route(api))
    r.add_delete(f"{PREFIX}/order", private(api, api.cancel_order))
    r.add_get(f"{PREFIX}/order", private(api, api.get_order, wants_body=False))
    r.add_delete(f"{PREFIX}/orders", private(api, api.cancel_all))
    r.add_get(f"{PREFIX}/orders/open", private(api, api.open_orders, wants_body=False))
    r.add_get(f"{PREFIX}/balances", private(api, api.balances, wants_body=False))
    r.add_get(f"{PREFIX}/orders/history", private(api, api.orders_history, wants_body=False))
    r.add_get(f"{PREFIX}/fills", private(api, api.fills, wants_body=False))
    r.add_post(f"{PREFIX}/admin/users", api.create_user)
    r.add_post(f"{PREFIX}/admin/deposit", lambda req: api.move_funds(req, "deposit"))
    r.add_post(f"{PREFIX}/admin/withdraw", lambda req: api.move_funds(req, "withdraw"))
    for path, handler in (("klines", api.klines), ("markets", api.list_markets), ("depth", api.depth),
                          ("trades", api.trades), ("ticker", api.ticker), ("tickers", api.tickers),
                          ("time", api.server_time), ("openapi.json", api.openapi)):
        r.add_get(f"{PREFIX}/{path}", public(api, handler))
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
