"""Order validation: a request body -> a command and the funds to lock. Pure, no I/O.

Rules (each error names the field and the rule; nothing is ever rounded):
- the minimal body `{"kind","type","price","quantity","market"}` is valid as written; `side`
  is an alias of `kind` (both given must agree); unknown fields are refused;
- limit: `price` and `quantity` required, `quoteQuantity` refused; price on the tick grid,
  quantity on the lot grid within [minQuantity, maxQuantity], notional >= minNotional;
- market: no `price`; a sell takes `quantity`; a buy takes exactly one of `quantity` or
  `quoteQuantity`; a market buy by quantity locks an estimate from the visible book plus a
  collar (`MARKET_BUY_COLLAR_BPS`), which also caps what it may spend;
- bounds: every amount's text is at most MAX_AMOUNT_CHARS long; a price is at most
  `max_price_ticks(spec)`, so price x maxQuantity in quote units fits in a signed 64-bit
  integer and so does every order's notional, fill total and fee (what orjson, Redis
  integers and the engine's snapshots hold exactly); a quoteQuantity or a market-buy
  estimate above INT64_MAX units is refused (AMOUNT_TOO_LARGE, naming the field);
- funds locked: limit buy = price x quantity (quote), sell = quantity (base), market buy
  = quoteQuantity or the estimate (quote). Fees are taken from what is received, so no
  fee is locked.

Plain code on the hot path: no pydantic, no Decimal, no Fraction. An amount's
text is split into an integer and a power of ten and checked against the market's grid
(`Grid`, integers computed once per market spec) with exact integer arithmetic; Decimal
only formats the message of an error. The command is a plain dataclass whose JSON is
byte-identical to `PlaceOrderCommand.model_dump_json(by_alias=True)`. The previous
pydantic/Decimal validator is kept as the oracle in tests/api/reference_orders.py, and a
property test checks both agree on every outcome and every error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

import orjson

from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.markets import MarketSpec, SelfTradePrevention
from cryptex_common.messages import ORDER_RECORD_PLACED, order_record
from cryptex_common.money import INT64_MAX, decimal_text, format_steps

MARKET_BUY_COLLAR_BPS = 500  # a market buy by quantity may pay up to 5% over the book estimate
ALLOWED_FIELDS = frozenset({
    "kind", "side", "type", "price", "quantity", "quoteQuantity", "market", "timeInForce",
    "postOnly", "clientOrderId", "selfTradePrevention",
})
CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9_\-:.]{1,36}")  # fullmatch only
_SIDES = {"buy": "buy", "sell": "sell"}
_TYPES = {"limit": "limit", "market": "market"}
_TIFS = {"gtc": "GTC", "ioc": "IOC", "fok": "FOK"}
_STPS = {s.value: s.value for s in SelfTradePrevention}


@dataclass(frozen=True, slots=True)
class OrderCommand:
    """A validated place-order command (PlaceOrderCommand's fields, plain values)."""

    user_id: str
    side: str
    order_type: str
    time_in_force: str
    post_only: bool
    price_ticks: int | None
    quantity_lots: int | None
    quote_budget_units: int | None
    stp: str | None
    client_order_id: str | None
    locked_units: int

    def wire_json(self, reply_to: str | None, request_id: str | None, correlation_id: str | None) -> bytes:
        """The command JSON: byte-identical to PlaceOrderCommand(...).model_dump_json(by_alias=True)
        (v1, so no `v`), which the engine's translate layer reads."""
        return orjson.dumps({
            "type": "place", "userId": self.user_id, "side": self.side, "orderType": self.order_type,
            "timeInForce": self.time_in_force, "postOnly": self.post_only,
            "priceTicks": self.price_ticks, "quantityLots": self.quantity_lots,
            "quoteBudgetUnits": self.quote_budget_units, "stp": self.stp,
            "clientOrderId": self.client_order_id, "lockedUnits": self.locked_units,
            "replyTo": reply_to, "requestId": request_id, "correlationId": correlation_id,
        })

    def record_tail(self, market: str) -> bytes:
        """The new order's record (`messages.order_record`) as JSON without its opening brace
        and without orderId, createdMs and updatedMs, which enqueue_order.lua splices in."""
        record = order_record(
            order_id=0, user_id=self.user_id, market=market, side=self.side, order_type=self.order_type,
            time_in_force=self.time_in_force, post_only=self.post_only, price_ticks=self.price_ticks,
            quantity_lots=self.quantity_lots, quote_budget_units=self.quote_budget_units, executed_lots=0,
            executed_quote_units=0, status="new", reason=None, client_order_id=self.client_order_id,
            created_ms=0, updated_ms=0)
        for name in ORDER_RECORD_PLACED:
            del record[name]
        return orjson.dumps(record)[1:]


def cancel_command_json(user_id: str, order_id: int, reply_to: str | None, request_id: str | None,
                        correlation_id: str | None) -> bytes:
    """Byte-identical to CancelOrderCommand(...).model_dump_json(by_alias=True) (v1)."""
    return orjson.dumps({"type": "cancel", "userId": user_id, "orderId": order_id, "replyTo": reply_to,
                         "requestId": request_id, "correlationId": correlation_id})


@dataclass(frozen=True, slots=True)
class ValidatedOrder:
    command: OrderCommand
    lock_asset: str
    lock_units: int


@dataclass(frozen=True, slots=True)
class Grid:
    """A market spec's integers: step sizes as mantissa x 10**-exponent, and its rules."""

    tick_m: int
    tick_e: int
    lot_m: int
    lot_e: int
    quote_decimals: int
    base_asset: str
    quote_asset: str
    min_quantity_lots: int
    max_quantity_lots: int
    min_notional_units: int
    quote_units_per_tick_lot: int
    base_units_per_lot: int
    max_price_ticks: int


def _step(text: str) -> tuple[int, int]:
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return int(whole + frac), len(frac)


_GRIDS: dict[int, tuple[MarketSpec, Grid]] = {}


def grid(spec: MarketSpec) -> Grid:
    """The spec's Grid, computed once per spec object (the cache holds the spec, so its id
    cannot be reused while cached)."""
    hit = _GRIDS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    rules = spec.rules()
    tick_m, tick_e = _step(spec.tick_size)
    lot_m, lot_e = _step(spec.lot_size)
    g = Grid(tick_m, tick_e, lot_m, lot_e, spec.quote_decimals, spec.base_asset, spec.quote_asset,
             rules.min_quantity_lots, rules.max_quantity_lots, rules.min_notional_units,
             rules.quote_units_per_tick_lot, rules.base_units_per_lot,
             INT64_MAX // (rules.max_quantity_lots * rules.quote_units_per_tick_lot))
    if len(_GRIDS) > 256:
        _GRIDS.clear()
    _GRIDS[id(spec)] = (spec, g)
    return g


def _amount(value: object, field: str) -> tuple[int, int, str]:
    """money.decimal_text's checks and messages, giving (digits, places, text): value =
    digits x 10**-places, trailing fraction zeros dropped."""
    text = decimal_text(value, field)
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return int(whole + frac), len(frac), text


def _steps(amount: tuple[int, int, str], step_m: int, step_e: int, field: str, code: ErrorCode,
           step: str | int) -> int:
    """money.to_steps in integers: amount / (step_m x 10**-step_e), exact, or the error.
    `step` is the step's text, or (an int) the asset decimals of a 10**-decimals step, used
    only to word the error as money.to_steps does."""
    digits, places, text = amount
    if places <= step_e:
        steps, rest = divmod(digits * 10 ** (step_e - places), step_m)
    else:
        steps, rest = divmod(digits, 10 ** (places - step_e) * step_m)
    if rest:
        step_value = Decimal(1).scaleb(-step) if isinstance(step, int) else Decimal(step)
        raise CryptexError(code, f"{field} {Decimal(text)} is not a multiple of {step_value}", field)
    if steps > INT64_MAX:
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, f"{field} is too large", field)
    return steps


def _enum(body: dict[str, object], field: str, allowed: dict[str, str], default: str | None) -> str:
    raw = body.get(field)
    if raw is None:
        if default is None:
            raise CryptexError(ErrorCode.MISSING_FIELD, f"{field} is required", field)
        return default
    if isinstance(raw, str):
        value = allowed.get(raw.lower())
        if value is not None:
            return value
    choices = ", ".join(sorted(set(allowed.values())))
    raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be one of: {choices}", field)


def market_field(body: dict[str, object]) -> str:
    raw = body.get("market")
    if raw is None:
        raise CryptexError(ErrorCode.MISSING_FIELD, "market is required", "market")
    if not isinstance(raw, str) or not raw.strip():
        raise CryptexError(ErrorCode.INVALID_FIELD, "market must be a string like SOL/USDC", "market")
    return raw


def parse_side(body: dict[str, object]) -> str:
    kind = _enum(body, "kind", _SIDES, "") if "kind" in body else None
    side = _enum(body, "side", _SIDES, "") if "side" in body else None
    if kind and side and kind != side:
        raise CryptexError(ErrorCode.INVALID_FIELD, "kind and side disagree", "side")
    value = kind or side
    if not value:
        raise CryptexError(ErrorCode.MISSING_FIELD, "kind (or side) is required", "kind")
    return value


def _positive(value: int, field: str) -> int:
    if value <= 0:
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be greater than zero", field)
    return value


def _quantity_lots(body: dict[str, object], spec: MarketSpec, g: Grid) -> int:
    lots = _positive(_steps(_amount(body["quantity"], "quantity"), g.lot_m, g.lot_e, "quantity",
                            ErrorCode.OFF_LOT, spec.lot_size),
                     "quantity")
    if lots < g.min_quantity_lots:
        raise CryptexError(
            ErrorCode.QUANTITY_TOO_SMALL, f"quantity must be at least {spec.min_quantity}", "quantity"
        )
    if lots > g.max_quantity_lots:
        raise CryptexError(
            ErrorCode.QUANTITY_TOO_LARGE, f"quantity must be at most {spec.max_quantity}", "quantity"
        )
    return lots


def validate_order(
    body: dict[str, object],
    spec: MarketSpec,
    user_id: str,
    asks_ticks_lots: list[tuple[int, int]] | None = None,
) -> ValidatedOrder:
    """`asks_ticks_lots` is the visible ask side (best first), needed only for a market buy
    by quantity. Checks run in a fixed order (the first failing one is answered)."""
    if not ALLOWED_FIELDS.issuperset(body):
        unknown = sorted(set(body) - ALLOWED_FIELDS)
        raise CryptexError(ErrorCode.UNKNOWN_FIELD, f"unknown field: {unknown[0]}", unknown[0])
    g = grid(spec)
    side = parse_side(body)
    order_type = _enum(body, "type", _TYPES, None)
    is_limit = order_type == "limit"
    tif = _enum(body, "timeInForce", _TIFS, "GTC" if is_limit else "IOC")
    post_only = body.get("postOnly", False)
    if not isinstance(post_only, bool):
        raise CryptexError(ErrorCode.INVALID_FIELD, "postOnly must be true or false", "postOnly")
    stp = _enum(body, "selfTradePrevention", _STPS, None) if body.get("selfTradePrevention") is not None else None
    coid = body.get("clientOrderId")
    if coid is not None and (not isinstance(coid, str) or not CLIENT_ORDER_ID.fullmatch(coid)):
        raise CryptexError(
            ErrorCode.INVALID_FIELD,
            "clientOrderId must be 1-36 characters of letters, digits, _ - : .",
            "clientOrderId",
        )
    price_ticks: int | None = None
    quantity_lots: int | None
    budget_units: int | None
    if is_limit:
        price_ticks, quantity_lots, budget_units, lock_units = _limit_amounts(body, spec, g, side, tif, post_only)
    else:
        quantity_lots, budget_units, lock_units = _market_amounts(body, spec, g, side, tif, post_only,
                                                                  asks_ticks_lots)
    command = OrderCommand(user_id, side, order_type, tif, post_only, price_ticks, quantity_lots,
                           budget_units, stp, coid, lock_units)
    return ValidatedOrder(command, g.quote_asset if side == "buy" else g.base_asset, lock_units)


def _limit_amounts(body: dict[str, object], spec: MarketSpec, g: Grid, side: str, tif: str,
                   post_only: bool) -> tuple[int, int, None, int]:
    """A limit order's (price ticks, quantity lots, no budget, units to lock)."""
    for required in ("price", "quantity"):
        if body.get(required) is None:
            raise CryptexError(ErrorCode.MISSING_FIELD, f"{required} is required for a limit order", required)
    if body.get("quoteQuantity") is not None:
        raise CryptexError(ErrorCode.INVALID_FIELD, "quoteQuantity is only for market buys", "quoteQuantity")
    if post_only and tif != "GTC":
        raise CryptexError(ErrorCode.INVALID_FIELD, "postOnly orders must be GTC", "postOnly")
    price_ticks = _positive(_steps(_amount(body["price"], "price"), g.tick_m, g.tick_e, "price",
                                   ErrorCode.OFF_TICK, spec.tick_size), "price")
    if price_ticks > g.max_price_ticks:
        top = format_steps(g.max_price_ticks, Decimal(spec.tick_size))
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, f"price must be at most {top}", "price")
    quantity_lots = _quantity_lots(body, spec, g)
    notional = price_ticks * quantity_lots * g.quote_units_per_tick_lot
    if notional > INT64_MAX:
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, "price x quantity is too large", "price")
    if notional < g.min_notional_units:
        raise CryptexError(
            ErrorCode.NOTIONAL_TOO_SMALL,
            f"price x quantity must be at least {spec.min_notional} {spec.quote_asset}",
            "quantity",
        )
    return price_ticks, quantity_lots, None, notional if side == "buy" else quantity_lots * g.base_units_per_lot


def _market_amounts(body: dict[str, object], spec: MarketSpec, g: Grid, side: str, tif: str, post_only: bool,
                    asks_ticks_lots: list[tuple[int, int]] | None) -> tuple[int | None, int | None, int]:
    """A market order's (quantity lots, quote budget units, units to lock)."""
    if body.get("price") is not None:
        raise CryptexError(ErrorCode.INVALID_FIELD, "price is not allowed on a market order", "price")
    if post_only:
        raise CryptexError(ErrorCode.INVALID_FIELD, "postOnly is only for limit orders", "postOnly")
    if tif == "GTC":
        raise CryptexError(ErrorCode.INVALID_FIELD, "market orders are IOC or FOK", "timeInForce")
    has_qty, has_quote = body.get("quantity") is not None, body.get("quoteQuantity") is not None
    if side == "sell":
        if has_quote:
            raise CryptexError(ErrorCode.INVALID_FIELD, "quoteQuantity is only for market buys", "quoteQuantity")
        if not has_qty:
            raise CryptexError(ErrorCode.MISSING_FIELD, "quantity is required", "quantity")
        quantity_lots = _quantity_lots(body, spec, g)
        return quantity_lots, None, quantity_lots * g.base_units_per_lot
    if has_qty == has_quote:
        raise CryptexError(ErrorCode.MISSING_FIELD, "a market buy takes exactly one of quantity or quoteQuantity",
                           "quantity")
    if has_quote:
        budget_units = _positive(_steps(_amount(body["quoteQuantity"], "quoteQuantity"), 1, g.quote_decimals,
                                        "quoteQuantity", ErrorCode.INVALID_FIELD, g.quote_decimals), "quoteQuantity")
        if budget_units < g.min_notional_units:
            raise CryptexError(ErrorCode.NOTIONAL_TOO_SMALL, f"quoteQuantity must be at least {spec.min_notional}",
                               "quoteQuantity")
        return None, budget_units, budget_units
    quantity_lots = _quantity_lots(body, spec, g)
    budget_units = market_buy_estimate(quantity_lots, asks_ticks_lots or [], spec)
    return quantity_lots, budget_units, budget_units


def market_buy_estimate(quantity_lots: int, asks: list[tuple[int, int]], spec: MarketSpec) -> int:
    """Quote needed to buy `quantity_lots` from the visible asks, plus the collar."""
    if not asks:
        raise CryptexError(ErrorCode.NO_LIQUIDITY, "no asks to buy from", "quantity")
    per_tick_lot = grid(spec).quote_units_per_tick_lot
    cost, left = 0, quantity_lots
    for price_ticks, lots in asks:
        take = min(left, lots)
        cost += price_ticks * take * per_tick_lot
        left -= take
        if left == 0:
            break
    if left:  # beyond the visible book: price the rest at the worst visible level
        cost += asks[-1][0] * left * per_tick_lot
    budget_units = -(-cost * (10_000 + MARKET_BUY_COLLAR_BPS) // 10_000)
    if budget_units > INT64_MAX:
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, "quantity costs too much to buy at market",
                           "quantity")
    return budget_units


def max_price_ticks(spec: MarketSpec) -> int:
    """The highest price (in ticks) such that price x maxQuantity, in quote smallest units,
    fits in a signed 64-bit integer. For SOL/USDC (tick 0.01, lot 0.001, maxQuantity
    100000, USDC 6 decimals) that is 92233720.36 USDC."""
    return grid(spec).max_price_ticks
