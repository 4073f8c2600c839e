"""issue 12: the engine's fast paths give exactly what the slow ones did.

- Decoding: orjson straight into the core's dataclasses must decode every entry to what
  the pydantic schema decodes it to, and leave every entry the schema refuses refused.
- Formatting: `StepFormat` writes exactly `money.format_steps`' strings; the dict
  formatters write exactly what `WireFormat.order`/`fill` write from the models.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptex_common.markets import load_markets_yaml
from cryptex_common.messages import COMMAND_ADAPTER, FillRecord, OrderRecord
from cryptex_common.money import format_steps
from cryptex_common.wire import StepFormat, WireFormat, fill_dicts
from cryptex_engine import decode
from tests.e2e.conftest import ROOT

SPEC = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC")


def slow_decode(stream_id: str, fields: dict[str, str]) -> decode.Decoded:
    """decode_entry with the fast path switched off: the pydantic schema only."""
    original = decode._fast_decode
    decode._fast_decode = lambda *a: None  # type: ignore[assignment]
    try:
        return decode.decode_entry(stream_id, fields)
    finally:
        decode._fast_decode = original


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**64), st.floats(allow_nan=False),
                   st.sampled_from(["buy", "sell", "limit", "market", "GTC", "IOC", "FOK", "BUY",
                                    "expire_maker", "none", "", "7", "x"]),
                   st.lists(st.integers(), max_size=1))
PLACE = {"type": "place", "userId": "1", "side": "buy", "orderType": "limit", "priceTicks": 100,
         "quantityLots": 5, "lockedUnits": 5000, "replyTo": "reply:a", "requestId": "r1"}
NAMES = [*decode._PLACE_KEYS, "orderId", "user_id", "extra"]


def outcome(fn: Any, fields: dict[str, str]) -> Any:
    try:
        return fn("1700000000000-3", fields)
    except Exception as exc:  # the kind of refusal is what must agree
        return ("refused", type(exc).__name__ in ("ValidationError", "ValueError", "KeyError"))


@settings(max_examples=600, deadline=None)
@given(base=st.sampled_from([PLACE, {"type": "cancel", "userId": "1", "orderId": 9},
                             {"type": "cancel_all", "userId": "2", "requestId": "q"}]),
       changes=st.dictionaries(st.sampled_from(NAMES), values, max_size=3),
       drop=st.sets(st.sampled_from(list(PLACE)), max_size=2), with_id=st.booleans())
def test_fast_decode_agrees_with_the_schema(base: dict[str, Any], changes: dict[str, Any],
                                            drop: set[str], with_id: bool) -> None:
    doc = {k: v for k, v in {**base, **changes}.items() if k not in drop}
    try:
        raw = orjson.dumps(doc).decode()
    except TypeError:  # an integer beyond 64 bits: orjson cannot write it, nor could the API
        return
    fields = {"c": raw, **({"id": "42"} if with_id else {})}
    assert outcome(decode.decode_entry, fields) == outcome(slow_decode, fields)


def test_the_common_commands_take_the_fast_path() -> None:
    fields = {"c": orjson.dumps(PLACE).decode(), "id": "42"}
    fast = decode._fast_decode("1-0", 1, fields["c"], fields)
    assert fast is not None and fast == slow_decode("1-0", fields)
    COMMAND_ADAPTER.validate_json(fields["c"])  # and the schema accepts it


@pytest.mark.parametrize("step", ["0.01", "0.001", "1", "10", "0.5", "0.000000001", "25", "0.0025", "1E+2"])
@settings(max_examples=200, deadline=None)
@given(n=st.integers(-(10**20), 10**20))
def test_step_format_equals_format_steps(step: str, n: int) -> None:
    assert StepFormat(Decimal(step))(n) == format_steps(n, Decimal(step))


def test_dict_formatters_equal_the_model_formatters() -> None:
    fmt = WireFormat(SPEC)
    rec = {"orderId": 7, "userId": "1", "market": SPEC.symbol, "side": "buy", "orderType": "limit",
           "timeInForce": "GTC", "postOnly": False, "priceTicks": 12345, "quantityLots": 70,
           "quoteBudgetUnits": None, "executedLots": 30, "executedQuoteUnits": 370350,
           "status": "partially_filled", "reason": None, "clientOrderId": "c", "createdMs": 1,
           "updatedMs": 2}
    assert fmt.order_dict(rec) == fmt.order(OrderRecord.model_validate(rec))
    trade = {"tradeId": 3, "seq": 9, "market": SPEC.symbol, "priceTicks": 12345, "quantityLots": 30,
             "quoteUnits": 370350, "takerSide": "sell", "buyOrderId": 7, "sellOrderId": 8,
             "buyUserId": "1", "sellUserId": "2", "buyerFeeUnits": 3, "sellerFeeUnits": 40, "tsMs": 5}
    for f in fill_dicts(trade, SPEC.base_asset, SPEC.quote_asset):
        assert fmt.fill_dict(f) == fmt.fill(FillRecord.model_validate(f))
