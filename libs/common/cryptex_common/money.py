"""Exact conversion between wire decimals and the integers used inside.

Rules: a value is a JSON number or a decimal string of at most `MAX_AMOUNT_CHARS`
characters; the whole string must be plain digits with an optional fraction (no sign,
exponent, spaces or trailing newline). NaN, infinities, booleans and empty strings are
refused. Grid checks use exact rational arithmetic (`fractions.Fraction`), never a Decimal
context, so a value off its grid is refused, never rounded, whatever its length. An amount
whose integer form exceeds `INT64_MAX` (what orjson, Redis integers and the engine's
snapshots hold exactly) is refused. Every error names the field.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from fractions import Fraction

import orjson

from cryptex_common.errors import CryptexError, ErrorCode

# Plain decimal: digits, optional fraction. No sign, no exponent, no spaces. fullmatch only.
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
INT64_MAX = 2**63 - 1
# Longest amount text accepted: far above any real amount (19 integer digits + 18
# decimals), short enough that parsing it costs nothing.
MAX_AMOUNT_CHARS = 64
# JSON bodies are flat objects; anything deeper than this is refused before it is walked.
MAX_JSON_DEPTH = 32


def decimal_text(value: object, field: str) -> str:
    """The plain decimal text of a JSON value (an int, a string, or a JSON number kept as
    its source text: `parse_json` hands floats over as strings), checked as a whole
    string: at most MAX_AMOUNT_CHARS, digits with an optional fraction, no sign, exponent,
    spaces or trailing newline. Every refusal names the field."""
    if isinstance(value, str):
        text = value
    elif (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, Decimal):
        text = str(value)  # a Decimal's exponent form such as 1E+3 fails the pattern below
    else:
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be a decimal number", field)
    if len(text) > MAX_AMOUNT_CHARS:
        raise CryptexError(
            ErrorCode.INVALID_FIELD, f"{field} is longer than {MAX_AMOUNT_CHARS} characters", field
        )
    if text.startswith("-"):
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must not be negative", field)
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise CryptexError(
            ErrorCode.INVALID_FIELD,
            f"{field} must be a plain decimal like \"12.5\" (no sign, exponent, NaN or Infinity)",
            field,
        )
    return text


def parse_decimal(value: object, field: str) -> Decimal:
    """A non-negative exact decimal from a JSON value (see `decimal_text`)."""
    return Decimal(decimal_text(value, field))  # exact: the constructor never rounds


def to_steps(value: Decimal, step: Decimal, field: str, code: ErrorCode) -> int:
    """`value / step` as an exact integer, or an error naming the grid."""
    steps = Fraction(value) / Fraction(step)
    if steps.denominator != 1:
        raise CryptexError(code, f"{field} {value} is not a multiple of {step}", field)
    result = steps.numerator
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


def _int_or_text(text: str) -> int | str:
    """JSON integers stay ints when short; a longer one stays text, so the field's own
    check refuses it by name (int() of 5,000 digits would raise outside any field)."""
    return int(text) if len(text) <= MAX_AMOUNT_CHARS else text


def _depth_exceeds(doc: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False


_SCALARS = (str, int, bool, type(None))


def parse_json(text: str | bytes) -> object:
    """`_parse_json_exact`, faster for the usual body: a flat object of strings, integers,
    booleans and nulls is parsed by orjson, which gives the same values (its integers are
    exact within 64 bits and turn larger ones into floats; the last of duplicate keys wins,
    as in `json`). Anything else (a float, an integer past 64 bits, nesting, an error of
    any kind) is parsed again by `_parse_json_exact`, which decides."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        doc = None
    if type(doc) is dict:
        for value in doc.values():
            if not isinstance(value, _SCALARS):
                break
        else:
            return doc
    return _parse_json_exact(text)


def _parse_json_exact(text: str | bytes) -> object:
    """JSON where numbers with a fraction or exponent stay as their exact source text and
    NaN/Infinity are refused, so no float ever touches an amount. Refuses (INVALID_JSON,
    field "body") bad UTF-8, bad syntax, and nesting deeper than MAX_JSON_DEPTH."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # strict: JSON bodies are UTF-8, never sniffed
        doc = json.loads(text, parse_float=str, parse_int=_int_or_text,
                         parse_constant=_refuse_constant)
    except RecursionError:
        raise CryptexError(ErrorCode.INVALID_JSON, "body is nested too deeply", "body") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CryptexError(ErrorCode.INVALID_JSON, f"body is not valid JSON: {exc}", "body") from None
    if _depth_exceeds(doc, MAX_JSON_DEPTH):
        raise CryptexError(ErrorCode.INVALID_JSON,
                           f"body is nested deeper than {MAX_JSON_DEPTH} levels", "body")
    return doc
