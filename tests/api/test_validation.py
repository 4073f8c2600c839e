"""Order validation and money parsing are pure: every rule checked without a server."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptex_api.orders import MARKET_BUY_COLLAR_BPS, market_buy_estimate, validate_order
from cryptex_api.ratelimit import TokenBuckets
from cryptex_common.errors import CryptexError, ErrorCode
from cryptex_common.markets import load_markets_yaml
from cryptex_common.money import format_steps, parse_decimal, parse_json, to_steps
from tests.e2e.conftest import ROOT

SOL = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC")


def test_the_seed_body_locks_price_times_quantity_in_quote() -> None:
    body = parse_json('{"kind":"buy","type":"limit","price":12000,"quantity":20,"market":"sol/usdc"}')
    order = validate_order(body, SOL, "7")  # type: ignore[arg-type]
    assert (order.command.price_ticks, order.command.quantity_lots) == (1_200_000, 20_000)
    assert order.lock_asset == "USDC" and order.lock_units == 240_000 * 10**6


def test_a_sell_locks_base_and_a_market_buy_by_quote_locks_the_quote() -> None:
    sell = validate_order({"side": "sell", "type": "limit", "price": "1.5", "quantity": "2", "market": "x"},
                          SOL, "1")
    assert sell.lock_asset == "SOL" and sell.lock_units == 2 * 10**9
    buy = validate_order({"side": "buy", "type": "market", "quoteQuantity": "25.5", "market": "x"}, SOL, "1")
    assert buy.lock_units == 25_500_000 and buy.command.quote_budget_units == 25_500_000


def test_market_buy_by_quantity_locks_the_book_estimate_plus_the_collar() -> None:
    asks = [(10_000, 1_000), (10_100, 5_000)]  # 1.000 @ 100.00, 5.000 @ 101.00
    cost = 1_000 * 10_000 * 10 + 500 * 10_100 * 10
    assert market_buy_estimate(1_500, asks, SOL) == -(-cost * (10_000 + MARKET_BUY_COLLAR_BPS) // 10_000)
    with pytest.raises(CryptexError) as err:
        market_buy_estimate(1, [], SOL)
    assert err.value.code == ErrorCode.NO_LIQUIDITY


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-1", "1e3", "1E-3", " 1", "", "0x10", "1_000", True, None])
def test_parse_decimal_refuses_anything_but_plain_decimals(raw: object) -> None:
    with pytest.raises(CryptexError) as err:
        parse_decimal(raw, "price")
    assert err.value.field == "price"


def test_json_numbers_keep_their_exact_text_and_nan_is_refused() -> None:
    assert parse_json('{"p": 0.1}') == {"p": "0.1"}
    assert parse_json('{"p": 1e400}') == {"p": "1e400"}  # then refused by parse_decimal
    with pytest.raises(CryptexError):
        parse_json('{"p": NaN}')


@given(st.integers(min_value=0, max_value=10**30), st.sampled_from(["0.01", "0.001", "0.1", "1", "5", "0.25"]))
def test_steps_round_trip_exactly(steps: int, step_text: str) -> None:
    step = Decimal(step_text)
    text = format_steps(steps, step)
    if steps <= 2**63 - 1:
        assert to_steps(parse_decimal(text, "x"), step, "x", ErrorCode.OFF_TICK) == steps


def test_token_bucket_allows_the_burst_then_asks_to_wait() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate_per_s=10, burst=3, clock=lambda: now[0])
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == pytest.approx(0.1)
    assert buckets.take("other") == 0.0
    now[0] += 0.1
    assert buckets.take("k") == 0.0
