"""Issue 11, pure half: exact money parsing and whole-string validation, no server.

Every bad value is a CryptexError (a 4xx) naming the field; nothing is ever rounded.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from cryptex_api.orders import max_price_ticks, validate_order
from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.markets import load_markets_yaml
from cryptex_common.money import INT64_MAX, MAX_AMOUNT_CHARS, parse_decimal, parse_json, to_steps, to_units
from tests.e2e.conftest import ROOT

SPECS = {s.symbol: s for s in load_markets_yaml((ROOT / "markets.yaml").read_text())}
SOL = SPECS["SOL/USDC"]


def order(**change: object) -> dict[str, object]:
    body: dict[str, object] = {"side": "buy", "type": "limit", "price": "10", "quantity": "1",
                               "market": "SOL/USDC"}
    body.update(change)
    return {k: v for k, v in body.items() if v is not None}


def refused(body: dict[str, object]) -> CryptexError:
    with pytest.raises(CryptexError) as err:
        validate_order(body, SOL, "1")
    return err.value


@pytest.mark.parametrize("field", ["quantity", "price"])
def test_off_grid_values_past_28_digits_are_refused_not_rounded(field: str) -> None:
    """issue 11 defect 4: `1.0000000000000000000000000001` was accepted as exactly 1
    (Decimal's 28-digit context rounded the division by the step)."""
    err = refused(order(**{field: "1.0000000000000000000000000001"}))
    assert err.field == field
    assert err.code == (ErrorCode.OFF_LOT if field == "quantity" else ErrorCode.OFF_TICK)


@pytest.mark.parametrize("digits", [29, 40, MAX_AMOUNT_CHARS - 2])
def test_off_grid_is_refused_at_every_length_up_to_the_bound(digits: int) -> None:
    """issue 11 defect 4: refuse, never round, at any length."""
    text = "1." + "0" * (digits - 1) + "1"
    text = text[:MAX_AMOUNT_CHARS]
    with pytest.raises(CryptexError) as err:
        to_steps(parse_decimal(text, "quantity"), Decimal("0.001"), "quantity", ErrorCode.OFF_LOT)
    assert err.value.field == "quantity"
    with pytest.raises(CryptexError):
        to_units(parse_decimal(text, "amount"), 12, "amount")


def test_on_grid_values_with_long_zero_tails_are_exact() -> None:
    value = parse_decimal("2." + "0" * 40, "quantity")
    assert to_steps(value, Decimal("0.001"), "quantity", ErrorCode.OFF_LOT) == 2000


@pytest.mark.parametrize("raw", ["1" * (MAX_AMOUNT_CHARS + 1), "0." + "0" * 5000 + "1", "9" * 5000])
def test_amount_text_longer_than_the_bound_is_a_4xx_naming_the_field(raw: str) -> None:
    """issue 11 defect 4/9: an amount that cannot be held is a 4xx naming the field."""
    with pytest.raises(CryptexError) as err:
        parse_decimal(raw, "amount")
    assert err.value.field == "amount" and err.value.http_status == 400
    assert str(MAX_AMOUNT_CHARS) in err.value.message


def test_amounts_beyond_64_bits_are_refused_naming_the_field() -> None:
    """issue 11 defect 9 (amounts): a transfer that cannot be held is refused."""
    with pytest.raises(CryptexError) as err:
        to_units(parse_decimal(str(INT64_MAX + 1), "amount"), 0, "amount")
    assert (err.value.code, err.value.field) == (ErrorCode.AMOUNT_TOO_LARGE, "amount")
    assert to_units(parse_decimal(str(INT64_MAX), "amount"), 0, "amount") == INT64_MAX


def test_price_is_bounded_so_price_times_max_quantity_fits_64_bits() -> None:
    """issue 11 defect 9 (amounts): price x maxQuantity in quote units must fit in int64,
    so every notional, fill sum and fee of one order does too."""
    rules = SOL.rules()
    top = max_price_ticks(SOL)
    assert top * rules.max_quantity_lots * rules.quote_units_per_tick_lot <= INT64_MAX
    assert (top + 1) * rules.max_quantity_lots * rules.quote_units_per_tick_lot > INT64_MAX
    too_high = Decimal(top + 1) * Decimal(SOL.tick_size)
    err = refused(order(price=str(too_high), quantity="0.001"))
    assert (err.code, err.field) == (ErrorCode.AMOUNT_TOO_LARGE, "price")
    ok = validate_order(order(price=str(Decimal(top) * Decimal(SOL.tick_size)), quantity="0.001",
                              side="sell"), SOL, "1")
    assert ok.command.price_ticks == top


def test_quote_quantity_is_bounded() -> None:
    err = refused(order(type="market", price=None, quantity=None, quoteQuantity=str(10**19),
                        timeInForce="IOC"))
    assert (err.code, err.field) == (ErrorCode.AMOUNT_TOO_LARGE, "quoteQuantity")


@pytest.mark.parametrize(("field", "value"), [
    ("price", "10\n"), ("quantity", "1\n"), ("clientOrderId", "abc\n"), ("price", "10\r\n"),
])
def test_a_trailing_newline_is_refused(field: str, value: str) -> None:
    """issue 11 defect 9: `$` matched before a trailing newline; whole strings must match."""
    assert refused(order(**{field: value})).field == field


def test_json_nested_5000_deep_is_invalid_json_not_a_crash() -> None:
    """issue 11 defect 9: JSON nested 5,000 deep raised RecursionError (a 500)."""
    with pytest.raises(CryptexError) as err:
        parse_json("[" * 5000 + "]" * 5000)
    assert (err.value.code, err.value.field) == (ErrorCode.INVALID_JSON, "body")
    with pytest.raises(CryptexError):
        parse_json('{"price": ' + "[" * 100 + "]" * 100 + "}")


def test_json_integers_of_5000_digits_reach_the_field_check() -> None:
    """issue 11 defect 9: a 5,000-digit JSON integer must be refused naming its field."""
    body = parse_json('{"price": ' + "9" * 5000 + "}")
    assert isinstance(body, dict)
    with pytest.raises(CryptexError) as err:
        parse_decimal(body["price"], "price")
    assert err.value.field == "price"


def test_json_body_errors_are_cryptex_errors() -> None:
    for raw in (b"\xff\xfe", b"{", b'{"p": NaN}', b'{"p": Infinity}'):
        with pytest.raises(CryptexError) as err:
            parse_json(raw)
        assert err.value.code == ErrorCode.INVALID_JSON
