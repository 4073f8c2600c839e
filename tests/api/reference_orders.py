"""The order validator as it was before issue 12 (pydantic, Decimal, Fraction), kept as the
oracle the plain-code validator in cryptex_api.orders is checked against
(tests/api/test_fast_validation.py). Not used by the API.

Order validation: a request body -> a command and the funds to lock. Pure, no I/O.

Rules (each error names the field and the rule; nothing is ever rounded):
- the seed body `{"kind","type","price","quantity","market"}` is valid as written; `side`
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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.markets import MarketSpec, SelfTradePrevention
from cryptex_common.messages import OrderType, PlaceOrderCommand, Side, TimeInForce
from cryptex_common.money import INT64_MAX, format_steps, parse_decimal, to_steps, to_units

MARKET_BUY_COLLAR_BPS = 500  # a market buy by quantity may pay up to 5% over the book estimate
ALLOWED_FIELDS = frozenset({
    "kind", "side", "type", "price", "quantity", "quoteQuantity", "market", "timeInForce",
    "postOnly", "clientOrderId", "selfTradePrevention",
})
CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9_\-:.]{1,36}")  # fullmatch only


@dataclass(frozen=True, slots=True)
class ValidatedOrder:
    command: PlaceOrderCommand
    lock_asset: str
    lock_units: int


def _enum(body: dict[str, object], field: str, allowed: dict[str, str], default: str | None) -> str:
    raw = body.get(field)
    if raw is None:
        if default is None:
            raise CryptexError(ErrorCode.MISSING_FIELD, f"{field} is required", field)
        return default
    if not isinstance(raw, str) or raw.lower() not in allowed:
        choices = ", ".join(sorted(set(allowed.values())))
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be one of: {choices}", field)
    return allowed[raw.lower()]


def market_field(body: dict[str, object]) -> str:
    raw = body.get("market")
    if raw is None:
        raise CryptexError(ErrorCode.MISSING_FIELD, "market is required", "market")
    if not isinstance(raw, str) or not raw.strip():
        raise CryptexError(ErrorCode.INVALID_FIELD, "market must be a string like SOL/USDC", "market")
    return raw


def parse_side(body: dict[str, object]) -> Side:
    sides = {"buy": "buy", "sell": "sell"}
    kind = _enum(body, "kind", sides, "") if "kind" in body else None
    side = _enum(body, "side", sides, "") if "side" in body else None
    if kind and side and kind != side:
        raise CryptexError(ErrorCode.INVALID_FIELD, "kind and side disagree", "side")
    value = kind or side
    if not value:
        raise CryptexError(ErrorCode.MISSING_FIELD, "kind (or side) is required", "kind")
    return Side(value)


def _positive(value: int, field: str) -> int:
    if value <= 0:
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be greater than zero", field)
    return value


def _quantity_lots(body: dict[str, object], spec: MarketSpec) -> int:
    value = parse_decimal(body["quantity"], "quantity")
    lots = _positive(
        to_steps(value, Decimal(spec.lot_size), "quantity", ErrorCode.OFF_LOT), "quantity"
    )
    rules = spec.rules()
    if lots < rules.min_quantity_lots:
        raise CryptexError(
            ErrorCode.QUANTITY_TOO_SMALL, f"quantity must be at least {spec.min_quantity}", "quantity"
        )
    if lots > rules.max_quantity_lots:
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
    by quantity."""
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        raise CryptexError(ErrorCode.UNKNOWN_FIELD, f"unknown field: {unknown[0]}", unknown[0])
    side = parse_side(body)
    order_type = OrderType(_enum(body, "type", {"limit": "limit", "market": "market"}, None))
    tif_default = "GTC" if order_type == OrderType.LIMIT else "IOC"
    tif = TimeInForce(_enum(body, "timeInForce", {t.lower(): t for t in ("GTC", "IOC", "FOK")},
                            tif_default))
    post_only = body.get("postOnly", False)
    if not isinstance(post_only, bool):
        raise CryptexError(ErrorCode.INVALID_FIELD, "postOnly must be true or false", "postOnly")
    stp, coid = _stp(body), _client_order_id(body)
    price_ticks = quantity_lots = budget_units = None
    if order_type == OrderType.LIMIT:
        price_ticks, quantity_lots, lock_units = _limit_terms(body, spec, side, tif, post_only)
    else:
        if body.get("price") is not None:
            raise CryptexError(ErrorCode.INVALID_FIELD, "price is not allowed on a market order", "price")
        if post_only:
            raise CryptexError(ErrorCode.INVALID_FIELD, "postOnly is only for limit orders", "postOnly")
        if tif == TimeInForce.GTC:
            raise CryptexError(ErrorCode.INVALID_FIELD, "market orders are IOC or FOK", "timeInForce")
        if side == Side.SELL:
            quantity_lots = _market_sell_lots(body, spec)
            lock_units = spec.rules().base_units(quantity_lots)
        else:
            quantity_lots, budget_units = _market_buy_terms(body, spec, asks_ticks_lots)
            lock_units = budget_units
    command = PlaceOrderCommand(
        userId=user_id, side=side, orderType=order_type, timeInForce=tif, postOnly=post_only,
        priceTicks=price_ticks, quantityLots=quantity_lots, quoteBudgetUnits=budget_units,
        stp=stp, clientOrderId=coid, lockedUnits=lock_units,
    )
    lock_asset = spec.quote_asset if side == Side.BUY else spec.base_asset
    return ValidatedOrder(command, lock_asset, lock_units)


def _stp(body: dict[str, object]) -> SelfTradePrevention | None:
    if body.get("selfTradePrevention") is None:
        return None
    return SelfTradePrevention(_enum(body, "selfTradePrevention",
                                     {s.value: s.value for s in SelfTradePrevention}, None))


def _client_order_id(body: dict[str, object]) -> str | None:
    coid = body.get("clientOrderId")
    if coid is not None and (not isinstance(coid, str) or not CLIENT_ORDER_ID.fullmatch(coid)):
        raise CryptexError(
            ErrorCode.INVALID_FIELD,
            "clientOrderId must be 1-36 characters of letters, digits, _ - : .",
            "clientOrderId",
        )
    return coid


def _limit_terms(body: dict[str, object], spec: MarketSpec, side: Side, tif: TimeInForce,
                 post_only: bool) -> tuple[int, int, int]:
    """A limit order's (price ticks, quantity lots, units to lock)."""
    rules = spec.rules()
    for required in ("price", "quantity"):
        if body.get(required) is None:
            raise CryptexError(ErrorCode.MISSING_FIELD, f"{required} is required for a limit order", required)
    if body.get("quoteQuantity") is not None:
        raise CryptexError(ErrorCode.INVALID_FIELD, "quoteQuantity is only for market buys", "quoteQuantity")
    if post_only and tif != TimeInForce.GTC:
        raise CryptexError(ErrorCode.INVALID_FIELD, "postOnly orders must be GTC", "postOnly")
    price = parse_decimal(body["price"], "price")
    price_ticks = _positive(
        to_steps(price, Decimal(spec.tick_size), "price", ErrorCode.OFF_TICK), "price"
    )
    if price_ticks > max_price_ticks(spec):
        top = format_steps(max_price_ticks(spec), Decimal(spec.tick_size))
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, f"price must be at most {top}", "price")
    quantity_lots = _quantity_lots(body, spec)
    notional = rules.notional_units(price_ticks, quantity_lots)
    if notional > INT64_MAX:
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, "price x quantity is too large", "price")
    if notional < rules.min_notional_units:
        raise CryptexError(
            ErrorCode.NOTIONAL_TOO_SMALL,
            f"price x quantity must be at least {spec.min_notional} {spec.quote_asset}",
            "quantity",
        )
    return price_ticks, quantity_lots, notional if side == Side.BUY else rules.base_units(quantity_lots)


def _market_sell_lots(body: dict[str, object], spec: MarketSpec) -> int:
    if body.get("quoteQuantity") is not None:
        raise CryptexError(ErrorCode.INVALID_FIELD, "quoteQuantity is only for market buys", "quoteQuantity")
    if body.get("quantity") is None:
        raise CryptexError(ErrorCode.MISSING_FIELD, "quantity is required", "quantity")
    return _quantity_lots(body, spec)


def _market_buy_terms(body: dict[str, object], spec: MarketSpec,
                      asks_ticks_lots: list[tuple[int, int]] | None) -> tuple[int | None, int]:
    """A market buy's (quantity lots or None, budget units): exactly one of quantity or
    quoteQuantity; by quantity, the budget is the visible asks' cost plus the collar."""
    has_qty, has_quote = body.get("quantity") is not None, body.get("quoteQuantity") is not None
    if has_qty == has_quote:
        raise CryptexError(
            ErrorCode.MISSING_FIELD,
            "a market buy takes exactly one of quantity or quoteQuantity", "quantity",
        )
    if not has_quote:
        quantity_lots = _quantity_lots(body, spec)
        return quantity_lots, market_buy_estimate(quantity_lots, asks_ticks_lots or [], spec)
    quote = parse_decimal(body["quoteQuantity"], "quoteQuantity")
    budget_units = _positive(to_units(quote, spec.quote_decimals, "quoteQuantity"), "quoteQuantity")
    if budget_units < spec.rules().min_notional_units:
        raise CryptexError(
            ErrorCode.NOTIONAL_TOO_SMALL,
            f"quoteQuantity must be at least {spec.min_notional}", "quoteQuantity",
        )
    return None, budget_units


def market_buy_estimate(quantity_lots: int, asks: list[tuple[int, int]], spec: MarketSpec) -> int:
    """Quote needed to buy `quantity_lots` from the visible asks, plus the collar."""
    if not asks:
        raise CryptexError(ErrorCode.NO_LIQUIDITY, "no asks to buy from", "quantity")
    rules = spec.rules()
    cost, left = 0, quantity_lots
    for price_ticks, lots in asks:
        take = min(left, lots)
        cost += rules.notional_units(price_ticks, take)
        left -= take
        if left == 0:
            break
    if left:  # beyond the visible book: price the rest at the worst visible level
        cost += rules.notional_units(asks[-1][0], left)
    budget_units = -(-cost * (10_000 + MARKET_BUY_COLLAR_BPS) // 10_000)
    if budget_units > INT64_MAX:
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, "quantity costs too much to buy at market",
                           "quantity")
    return budget_units



def max_price_ticks(spec: MarketSpec) -> int:
    """The highest price (in ticks) such that price x maxQuantity, in quote smallest units,
    fits in a signed 64-bit integer. For SOL/USDC (tick 0.01, lot 0.001, maxQuantity
    100000, USDC 6 decimals) that is 92233720.36 USDC."""
    rules = spec.rules()
    return INT64_MAX // (rules.max_quantity_lots * rules.quote_units_per_tick_lot)
