"""Deposit/withdraw body validation: pure, no I/O.

`{userId, asset, amount, txId}`: userId a string of digits (or a JSON integer), asset a
known asset (any case), amount a positive decimal on the asset's grid and at most INT64_MAX
smallest units, txId 1-128 printable ASCII characters. Each error names its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.money import parse_decimal, to_units

FIELDS = ("userId", "asset", "amount", "txId")
USER_ID = re.compile(r"[0-9]{1,18}")
ASSET = re.compile(r"[A-Za-z0-9]{1,10}")
TX_ID = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True, slots=True)
class Transfer:
    user_id: str
    asset: str
    units: int
    tx_id: str


def _text(body: Mapping[str, object], field: str, pattern: re.Pattern[str], rule: str) -> str:
    raw = body[field]
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(text, str) or not pattern.fullmatch(text):
        raise CryptexError(ErrorCode.INVALID_FIELD, f"{field} must be {rule}", field)
    return text


def validate_transfer(body: Mapping[str, object], asset_decimals: Mapping[str, int]) -> Transfer:
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise CryptexError(ErrorCode.UNKNOWN_FIELD, f"unknown field: {unknown[0][:64]}", unknown[0][:64])
    for field in FIELDS:
        if body.get(field) in (None, ""):
            raise CryptexError(ErrorCode.MISSING_FIELD, f"{field} is required", field)
    user_id = _text(body, "userId", USER_ID, "a user id (digits)")
    asset = _text(body, "asset", ASSET, "an asset name like USDC").upper()
    tx_id = _text(body, "txId", TX_ID, "1-128 printable ASCII characters")
    if asset not in asset_decimals:
        raise CryptexError(ErrorCode.INVALID_FIELD, f"unknown asset {asset}", "asset")
    units = to_units(parse_decimal(body["amount"], "amount"), asset_decimals[asset], "amount")
    if units <= 0:
        raise CryptexError(ErrorCode.INVALID_FIELD, "amount must be greater than zero", "amount")
    return Transfer(user_id, asset, units, tx_id)
