"""Stream entry -> core command, for one market: the one decoding rule the engine, a
restart and `cryptex replay` share (docs/decisions/0011).

Invariants:
- Pure and deterministic: the same entry always decodes to the same command or error.
- The fast path (orjson straight into the core's dataclasses) only takes values the
  pydantic schema accepts as they are; everything else goes through the schema, so both
  paths agree on every entry (what the schema refuses stays refused).
- An undecodable entry carrying an order id and the enqueue script's lock envelope becomes
  a RejectOrder that takes a sequence number; one without it takes none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from cryptex_common import ledger, stream_ids
from cryptex_common.markets import MarketSpec, SelfTradePrevention
from cryptex_common.messages import (
    COMMAND_ADAPTER,
    COMMAND_VERSION,
    CancelAllCommand,
    CancelOrderCommand,
    OrderType,
    PlaceOrderCommand,
    Side,
    TimeInForce,
)
from cryptex_engine.domain.commands import (
    CancelAll,
    CancelOrder,
    Configure,
    EngineCommand,
    PlaceOrder,
    RejectOrder,
)

# The lock envelope the enqueue script writes next to `id` and `c` (names defined by the
# ledger; these fallbacks are the same names, for a ledger module that predates them).
ENTRY_USER: str = getattr(ledger, "ENTRY_USER", "u")
ENTRY_LOCK_ASSET: str = getattr(ledger, "ENTRY_LOCK_ASSET", "a")
ENTRY_LOCK_UNITS: str = getattr(ledger, "ENTRY_LOCK_UNITS", "l")
REASON_UNSUPPORTED = "UNSUPPORTED_COMMAND"  # an order whose command this engine cannot read


@dataclass(slots=True)
class Unreadable:
    """What an undecodable order entry still tells (its envelope, and whatever of `c` is
    plain JSON of the right type): enough to close its record and answer its sender."""

    user_id: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    price_ticks: int | None
    quantity_lots: int | None
    reply_to: str | None
    request_id: str | None
    correlation_id: str | None
    type: Literal["unsupported"] = "unsupported"


@dataclass(slots=True)
class Decoded:
    """One stream entry, decoded: the core command plus where its reply goes."""

    stream_id: str
    ts_ms: int
    kind: str  # the command's `type`: place | cancel | cancel_all | configure | unsupported
    command: EngineCommand
    order_id: int | None = None
    reply_to: str | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    unreadable: Unreadable | None = None  # what an undecodable order entry still tells


_SIDES = {s.value: s for s in Side}
_ORDER_TYPES = {t.value: t for t in OrderType}
_TIFS = {t.value: t for t in TimeInForce}
_STPS = {m.value: m for m in SelfTradePrevention}
_ROUTING = ("replyTo", "requestId", "correlationId")
_PLACE_KEYS = frozenset({"v", "type", "userId", "side", "orderType", "timeInForce", "postOnly",
                         "priceTicks", "quantityLots", "quoteBudgetUnits", "stp", "clientOrderId",
                         "lockedUnits", *_ROUTING})
_CANCEL_KEYS = frozenset({"v", "type", "userId", "orderId", *_ROUTING})
_CANCEL_ALL_KEYS = frozenset({"v", "type", "userId", *_ROUTING})
_NOT_PLAIN = object()  # a value the fast path leaves to pydantic


def _opt_int(doc: dict[str, Any], name: str) -> Any:
    value = doc.get(name)
    return value if value is None or type(value) is int else _NOT_PLAIN


def _opt_str(doc: dict[str, Any], name: str) -> Any:
    value = doc.get(name)
    return value if value is None or type(value) is str else _NOT_PLAIN


def _fast_decode(stream_id: str, ts_ms: int, raw: str, fields: dict[str, str]) -> Decoded | None:
    """The commonest commands (place, cancel, cancel_all) in their plain form, straight
    from orjson into the core's dataclasses; None for anything else, which `decode_entry`
    leaves to the pydantic schema. Every value taken here is one the schema accepts as is
    (exact JSON types, known keys, enum values spelled exactly), so both paths decode a
    command to the same result; the rest (coercions, errors, configure) is pydantic's."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    v = doc.get("v", 1)
    kind = doc.get("type")
    user_id = doc.get("userId")
    if type(v) is not int or not 1 <= v <= COMMAND_VERSION or type(user_id) is not str:
        return None
    routing = [_opt_str(doc, name) for name in _ROUTING]
    if _NOT_PLAIN in routing:
        return None
    if kind == "place":
        return _fast_place(stream_id, ts_ms, doc, user_id, routing, fields)
    if kind == "cancel" and doc.keys() <= _CANCEL_KEYS:
        order_id = doc.get("orderId")
        if type(order_id) is not int:
            return None
        return Decoded(stream_id, ts_ms, "cancel", CancelOrder(order_id, user_id), None, *routing)
    if kind == "cancel_all" and doc.keys() <= _CANCEL_ALL_KEYS:
        return Decoded(stream_id, ts_ms, "cancel_all", CancelAll(user_id), None, *routing)
    return None


def _fast_place(stream_id: str, ts_ms: int, doc: dict[str, Any], user_id: str, routing: list[Any],
                fields: dict[str, str]) -> Decoded | None:
    if not doc.keys() <= _PLACE_KEYS:
        return None
    try:
        side = _SIDES[doc["side"]]
        order_type = _ORDER_TYPES[doc["orderType"]]
        tif = _TIFS[doc.get("timeInForce", "GTC")]
        stp_raw = doc.get("stp")
        stp = None if stp_raw is None else _STPS[stp_raw]
    except (KeyError, TypeError):  # missing, misspelt or unhashable: pydantic says which
        return None
    post_only = doc.get("postOnly", False)
    locked = doc.get("lockedUnits")
    price, qty, budget = (_opt_int(doc, "priceTicks"), _opt_int(doc, "quantityLots"),
                          _opt_int(doc, "quoteBudgetUnits"))
    coid = _opt_str(doc, "clientOrderId")
    if (type(post_only) is not bool or type(locked) is not int
            or _NOT_PLAIN in (price, qty, budget, coid)):
        return None
    order_id = int(fields["id"])
    cmd = PlaceOrder(order_id, user_id, side, order_type, tif, post_only, price, qty, budget, stp,
                     locked, coid)
    return Decoded(stream_id, ts_ms, "place", cmd, order_id, *routing)


def decode_entry(stream_id: str, fields: dict[str, str]) -> Decoded:
    """Raises ValueError/pydantic.ValidationError for an entry that is not a command."""
    ts_ms = stream_ids.ts_ms(stream_id)
    raw = fields["c"]
    fast = _fast_decode(stream_id, ts_ms, raw, fields)
    if fast is not None:
        return fast
    wire = COMMAND_ADAPTER.validate_json(raw)
    routing = (getattr(wire, "reply_to", None), getattr(wire, "request_id", None),
               getattr(wire, "correlation_id", None))
    if isinstance(wire, PlaceOrderCommand):
        order_id = int(fields["id"])
        cmd: EngineCommand = PlaceOrder(
            order_id=order_id,
            user_id=wire.user_id,
            side=wire.side,
            order_type=wire.order_type,
            time_in_force=wire.time_in_force,
            post_only=wire.post_only,
            price_ticks=wire.price_ticks,
            quantity_lots=wire.quantity_lots,
            quote_budget_units=wire.quote_budget_units,
            stp=wire.stp,
            locked_units=wire.locked_units,
            client_order_id=wire.client_order_id,
        )
        return Decoded(stream_id, ts_ms, "place", cmd, order_id, *routing)
    if isinstance(wire, CancelOrderCommand):
        return Decoded(stream_id, ts_ms, "cancel", CancelOrder(wire.order_id, wire.user_id), None, *routing)
    if isinstance(wire, CancelAllCommand):
        return Decoded(stream_id, ts_ms, "cancel_all", CancelAll(wire.user_id), None, *routing)
    return Decoded(stream_id, ts_ms, "configure", Configure(
        wire.state, wire.maker_fee_bps, wire.taker_fee_bps, wire.min_quantity_lots,
        wire.max_quantity_lots, wire.min_notional_units, wire.self_trade_prevention))


def _json_object(raw: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _pick(doc: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """doc[name] if it has the right type (an int, or a str/StrEnum value), else default."""
    value = doc.get(name)
    if kind is int:
        return value if type(value) is int else default
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            return default
    return default


def reject_unreadable(stream_id: str, fields: dict[str, str], spec: MarketSpec) -> Decoded | None:
    """The rejection of an entry whose `c` cannot be decoded, when it carries an order id
    and a lock envelope (the enqueue script writes both); None otherwise (nothing was
    locked by it that the engine could know). Pure: a replay decides exactly the same."""
    try:
        order_id = int(fields["id"])
        user_id = fields[ENTRY_USER]
        asset = fields[ENTRY_LOCK_ASSET]
        units = int(fields[ENTRY_LOCK_UNITS])
    except (KeyError, ValueError, TypeError):
        return None
    if not user_id or not asset or units < 0:
        return None
    doc = _json_object(fields.get("c") or "")
    side = Side.BUY if asset == spec.quote_asset else Side.SELL  # what it locked says
    wire = Unreadable(
        user_id=user_id, side=side,
        order_type=_pick(doc, "orderType", OrderType, OrderType.LIMIT),
        time_in_force=_pick(doc, "timeInForce", TimeInForce, TimeInForce.GTC),
        price_ticks=_pick(doc, "priceTicks", int), quantity_lots=_pick(doc, "quantityLots", int),
        reply_to=_pick(doc, "replyTo", str), request_id=_pick(doc, "requestId", str),
        correlation_id=_pick(doc, "correlationId", str),
    )
    command = RejectOrder(order_id, user_id, side, asset, units, REASON_UNSUPPORTED)
    return Decoded(stream_id, stream_ids.ts_ms(stream_id), "unsupported", command, order_id,
                   wire.reply_to, wire.request_id, wire.correlation_id, wire)


def read_entry(stream_id: str, fields: dict[str, str], spec: MarketSpec) -> tuple[Decoded | None, str | None]:
    """(decoded command or None, why it could not be decoded or None). The one rule the
    engine and every replay share: an undecodable entry is an error to dead-letter; if it
    carries an order id and a lock envelope it is also a RejectOrder taking a sequence
    number, otherwise it is skipped and takes none."""
    try:
        return decode_entry(stream_id, fields), None
    except Exception as exc:
        return reject_unreadable(stream_id, fields, spec), f"{type(exc).__name__}: {exc}"
