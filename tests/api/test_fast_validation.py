"""The plain-code order validator (issue 12) agrees with the pydantic/Decimal one it
replaced (tests/api/reference_orders.py) on every outcome: the same error (code, message,
field) or the same lock and byte-identical command and record JSON. parse_json's orjson
fast path agrees with the standard-library parse it skips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryptex_api.orders import cancel_command_json, validate_order
from cryptex_common.errors import CryptexError
from cryptex_common.markets import load_markets_yaml
from cryptex_common.messages import CancelOrderCommand, OrderRecord, OrderStatus
from cryptex_common.money import _parse_json_exact, parse_json
from tests.api import reference_orders

ROOT = Path(__file__).resolve().parents[2]
SPECS = load_markets_yaml((ROOT / "markets.yaml").read_text())
SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

amount_text = st.one_of(
    st.sampled_from(["0", "1", "150.25", "150.250", "0.1", "0.001", "0.0001", "00.10", "1.", ".5",
                     "1e3", "-1", " 1", "1\n", "NaN", "", "92233720.36", "92233720.37",
                     "100000", "100000.001", "9" * 19, "9" * 64, "9" * 65, "1." + "0" * 62,
                     "0.000001", "0.0000001", "5", "10", "25.5"]),
    st.from_regex(r"[0-9]{1,8}(\.[0-9]{1,8})?", fullmatch=True),
)
amount = st.one_of(amount_text, st.integers(-5, 10**20), st.none(), st.booleans(),
                   st.floats(allow_nan=False).map(str), st.lists(st.integers(), max_size=1))
word = st.one_of(st.none(), st.sampled_from(["buy", "sell", "BUY", "Sell", "limit", "market", "LIMIT",
                                             "gtc", "GTC", "IOC", "fok", "expire_maker", "none",
                                             "expire_both", "x", ""]), st.integers(0, 2))
bodies = st.fixed_dictionaries({}, optional={
    "kind": word, "side": word, "type": word, "price": amount, "quantity": amount,
    "quoteQuantity": amount, "market": st.sampled_from(["SOL/USDC", "sol_usdc"]),
    "timeInForce": word, "postOnly": st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
    "clientOrderId": st.one_of(st.none(), st.sampled_from(["a", "c-1:x.y", "bad id", "x" * 37])),
    "selfTradePrevention": word, "timeinforce": word,
})
grid_text = st.one_of(st.from_regex(r"[1-9][0-9]{0,5}(\.[0-9]{1,4})?", fullmatch=True), st.integers(1, 10**6),
                      st.sampled_from(["150.25", "0.1", "0.001", "1.50", "92233720.36", "100000"]))
plausible = st.fixed_dictionaries(
    {"side": st.sampled_from(["buy", "sell"]), "type": st.sampled_from(["limit", "limit", "market"]),
     "market": st.just("SOL/USDC")},
    optional={"price": grid_text, "quantity": grid_text, "quoteQuantity": grid_text,
              "timeInForce": st.sampled_from(["GTC", "ioc", "FOK"]), "postOnly": st.booleans(),
              "clientOrderId": st.sampled_from(["a", "c-1:x.y"]),
              "selfTradePrevention": st.sampled_from(["expire_maker", "none", "expire_taker"])},
)
price_text = st.one_of(st.from_regex(r"[1-9][0-9]{0,3}(\.[0-9]{1,2}0?)?", fullmatch=True), st.integers(1, 9999))
qty_text = st.one_of(st.from_regex(r"[1-9][0-9]{0,2}(\.[0-9]{1,3})?", fullmatch=True), st.integers(1, 999))
limits = st.fixed_dictionaries(
    {"side": st.sampled_from(["buy", "sell"]), "type": st.just("limit"), "price": price_text,
     "quantity": qty_text, "market": st.just("SOL/USDC")},
    optional={"timeInForce": st.sampled_from(["GTC", "ioc", "FOK"]), "postOnly": st.booleans(),
              "clientOrderId": st.sampled_from(["a", "c-1:x.y"]),
              "selfTradePrevention": st.sampled_from(["expire_maker", "none", "expire_taker"])},
)
markets = st.fixed_dictionaries(
    {"kind": st.sampled_from(["buy", "sell"]), "type": st.just("market"), "market": st.just("SOL/USDC")},
    optional={"quantity": qty_text, "quoteQuantity": price_text, "timeInForce": st.sampled_from(["IOC", "FOK"])},
)
bodies = st.one_of(bodies, plausible, limits, markets)
asks = st.one_of(st.none(), st.lists(st.tuples(st.integers(1, 10**9), st.integers(1, 10**7)), max_size=4))


def outcome(validate: Any, body: dict[str, Any], spec: Any, book: Any) -> tuple[Any, ...]:
    try:
        return ("ok", validate(body, spec, "7", book))
    except CryptexError as err:
        return ("error", err.code, str(err), err.field)


@SETTINGS
@given(body=bodies, spec=st.sampled_from(SPECS), book=asks)
@example(body={"kind": "buy", "type": "limit", "price": 12000, "quantity": 20, "market": "sol/usdc"},
         spec=SPECS[0], book=None)
@example(body={"side": "buy", "type": "limit", "price": "1.50", "quantity": "0.0015"}, spec=SPECS[0], book=None)
def test_plain_validator_agrees_with_the_reference(body: dict[str, Any], spec: Any, book: Any) -> None:
    new, old = outcome(validate_order, body, spec, book), outcome(reference_orders.validate_order, body, spec, book)
    assert new[0] == old[0], (new, old)
    if new[0] == "error":
        assert new == old
        return
    fast, ref = new[1], old[1]
    assert (fast.lock_asset, fast.lock_units) == (ref.lock_asset, ref.lock_units)
    wire = ref.command.model_copy(update={"reply_to": "reply:api-1", "request_id": "api-1:9",
                                          "correlation_id": "c0ffee"})
    assert fast.command.wire_json("reply:api-1", "api-1:9", "c0ffee") == wire.model_dump_json(by_alias=True).encode()
    c = ref.command
    record = OrderRecord(
        orderId=0, userId="7", market=spec.symbol, side=c.side, orderType=c.order_type,
        timeInForce=c.time_in_force, postOnly=c.post_only, priceTicks=c.price_ticks,
        quantityLots=c.quantity_lots, quoteBudgetUnits=c.quote_budget_units, status=OrderStatus.NEW,
        clientOrderId=c.client_order_id, createdMs=0, updatedMs=0,
    ).model_dump(by_alias=True, mode="json", exclude={"order_id", "created_ms", "updated_ms"})
    assert fast.command.record_tail(spec.symbol) == orjson.dumps(record)[1:]


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=5),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6,
)


def parsed(parse: Any, raw: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", parse(raw))
    except CryptexError as err:
        return ("error", err.code, str(err), err.field)


@SETTINGS
@given(doc=st.one_of(st.dictionaries(st.sampled_from(["price", "quantity", "kind", "a"]), json_values, max_size=4),
                     json_values),
       noise=st.sampled_from(["", " ", "\ufeff", "\\ud800", "\\u00e9", "NaN", "1e999", ",", "}", '"a":1,', "\xff"]),
       where=st.integers(0, 2))
@example(doc={"a": 1}, noise='"a":2,', where=1)
def test_parse_json_fast_path_agrees_with_the_exact_parse(doc: Any, noise: str, where: int) -> None:
    text = json.dumps(doc)
    if where == 1 and text.startswith("{") and len(text) > 2:
        text = "{" + noise + text[1:]
    elif where == 2:
        text = noise + text
    raw = text.encode("utf-8", "surrogatepass")
    assert parsed(parse_json, raw) == parsed(_parse_json_exact, raw)


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)  # JSON text has no lone surrogates


@given(user=text, order_id=st.integers(1, 2**53), reply_to=st.one_of(st.none(), text),
       request_id=st.one_of(st.none(), text), correlation=st.one_of(st.none(), text))
def test_cancel_command_json_is_the_schema_s(user: str, order_id: int, reply_to: str | None, request_id: str | None,
                                            correlation: str | None) -> None:
    model = CancelOrderCommand(userId=user, orderId=order_id, replyTo=reply_to, requestId=request_id,
                               correlationId=correlation)
    assert cancel_command_json(user, order_id, reply_to, request_id, correlation) == \
        model.model_dump_json(by_alias=True).encode()
