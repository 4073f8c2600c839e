"""Exact conversion between wire decimals and the integers used inside.

Rules: a value is a JSON number or a decimal string; it is parsed with `decimal.Decimal`
(never float); NaN, infinities, exponents, signs, empty strings and booleans are refused;
a value off its grid is refused, never rounded. Every error names the field.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from cryptex_common.errors import CryptexError, ErrorCode

# Plain decimal: digits, optional fraction. No sign, no exponent, no spaces.
_PLAIN_DECIMAL = re.compile(r"^[0-9]{1,30}(\.[0-9]{1,30})?$")
INT64_MAX = 2**63 - 1


def parse_decimal(value: object, field: str) -> Decimal:
    """A non-negative exact decimal from a JSON value: an int, a string, or a JSON number
    kept as its source text (`parse_json` hands floats over as strings)."""
    if isinstance(value, bool) or value is None:
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be a decimal number", field)
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, Decimal):
        text = str(value)  # an exponent form such as 1E+3 fails the pattern below
    elif isinstance(value, str):
        text = value
    else:
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be a decimal number", field)
    if text.startswith("-"):
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must not be negative", field)
    if not _PLAIN_DECIMAL.match(text):
        raise CryptexError(
            ErrorCode.INVALID_FIELD,
            f"{field} must be a plain decimal like \"12.5\" (no sign, exponent, NaN or Infinity)",
            field,
        )
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex already guarantees this
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} is not a number", field) from exc


def to_steps(value: Decimal, step: Decimal, field: str, code: ErrorCode) -> int:
    """`value / step` as an exact integer, or an error naming the grid."""
    steps = value / step
    if steps != steps.to_integral_value():
        raise CryptexError(code, f"{field} {value} is not a multiple of {step}", field)
    result = int(steps)
    if result > INT64_MAX:
        raise CryptexError(ErrorCode.AMOUNT_TOO_LARGE, f"{field} is too large", field)
    return result


def to_units(value: Decimal, decimals: int, field: str) -> int:
    """An asset amount in smallest units; more decimals than the asset has is an error."""
    return to_steps(value, Decimal(1).scaleb(-decimals), field, ErrorCode.INVALID_FIELD)


def format_steps(steps: int, step: Decimal) -> str:
    """Integer steps back to a decimal string on the step's grid, e.g. 1200000 x 0.01 ->
    "12000.00". Integer arithmetic only (this runs for every level and fill published)."""
    sign, digits, exponent = step.as_tuple()
    assert isinstance(exponent, int) and not sign
    mantissa = int("".join(map(str, digits)))
    places = -exponent if exponent < 0 else 0
    scaled = steps * mantissa * (10**exponent if exponent > 0 else 1)
    negative = scaled < 0
    text = str(-scaled if negative else scaled)
    if places:
        text = text.rjust(places + 1, "0")
        text = f"{text[:-places]}.{text[-places:]}"
    return f"-{text}" if negative else text


def format_units(units: int, decimals: int) -> str:
    return format_steps(units, Decimal(1).scaleb(-decimals))


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def parse_json(text: str | bytes) -> object:
    """JSON where numbers with a fraction or exponent stay as their exact source text and
    NaN/Infinity are refused, so no float ever touches an amount."""
    import json

    return json.loads(text, parse_float=str, parse_constant=_refuse_constant)
