"""executionReport derivation (binance/orders.py) on the engine's per-batch messages, for the
cases the stack tests do not reach: several fills of one taker in a batch, a market buy by
quote, FOK expiry, a post-only rejection, and orders older than the feed. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from cryptex_wsgateway.binance.orders import ExecutionReports, account_position

pytestmark = pytest.mark.slow
START = 1_000_000


def order(oid: str, status: str, executed: str, quote: str, created: int = START + 5, **kw: Any) -> dict[str, Any]:
    base = {"orderId": oid, "clientOrderId": f"c{oid}", "market": "SOL/USDC", "side": "buy", "type": "limit",
            "timeInForce": "GTC", "postOnly": False, "price": "10.00", "quantity": "3.000", "quoteQuantity": None,
            "executedQty": executed, "executedQuoteQty": quote, "status": status, "reason": None,
            "createdAt": created, "updatedAt": created + 1}
    return {**base, **kw}


def fill(oid: str, tid: int, qty: str, quote: str, price: str = "10.00") -> dict[str, Any]:
    return {"tradeId": str(tid), "orderId": oid, "market": "SOL/USDC", "side": "buy", "price": price,
            "quantity": qty, "quoteQuantity": quote, "fee": "0.001000000", "feeAsset": "SOL",
            "liquidity": "taker", "ts": START + 9}


def feed() -> ExecutionReports:
    return ExecutionReports(lambda market: ("0.000", "0.000000"), START)


def summary(reports: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["x"], r["X"], r["l"], r["z"], r["Z"], r["t"]) for r in reports]


def test_a_taker_filled_by_two_makers_in_one_batch() -> None:
    f = feed()
    out = f.on_order(order("1", "filled", "3.000", "30.000000"), 0)
    out += f.on_fill(fill("1", 7, "1.000", "10.000000"), 0)
    out += f.on_fill(fill("1", 8, "2.000", "20.000000"), 0)
    assert summary(out) == [("NEW", "NEW", "0.000", "0.000", "0.000000", -1),
                            ("TRADE", "PARTIALLY_FILLED", "1.000", "1.000", "10.000000", 7),
                            ("TRADE", "FILLED", "2.000", "3.000", "30.000000", 8)]
    assert f.orders == {}  # forgotten once filled
    assert [r["w"] for r in out] == [True, True, False]


def test_market_buy_by_quote_then_expired_remainder() -> None:
    f = feed()
    o = order("2", "expired", "1.500", "15.000000", type="market", price=None, quantity=None,
              quoteQuantity="20.000000", timeInForce="IOC")
    out = f.on_order(o, 0) + f.on_fill(fill("2", 9, "1.500", "15.000000"), 0)
    assert summary(out) == [("NEW", "NEW", "0.000", "0.000", "0.000000", -1),
                            ("TRADE", "PARTIALLY_FILLED", "1.500", "1.500", "15.000000", 9),
                            ("EXPIRED", "EXPIRED", "0.000", "1.500", "15.000000", -1)]
    assert {(r["o"], r["f"], r["q"], r["p"], r["Q"]) for r in out} == {("MARKET", "GTC", "0.000", "0", "20.000000")}


def test_fok_that_cannot_fill_and_a_rejected_post_only() -> None:
    f = feed()
    fok = f.on_order(order("3", "expired", "0.000", "0.000000", timeInForce="FOK"), 0)
    assert [(r["x"], r["X"], r["f"]) for r in fok] == [("NEW", "NEW", "FOK"), ("EXPIRED", "EXPIRED", "FOK")]
    assert f.on_order(order("4", "rejected", "0.000", "0.000000", postOnly=True), 0) == []
    assert f.orders == {}


def test_an_order_older_than_the_feed() -> None:
    f = feed()
    old = START - 60_000
    # partially filled before the feed started (1.000), 0.500 more now: no NEW, z continues
    out = f.on_order(order("5", "partially_filled", "1.500", "15.000000", created=old), 0)
    out += f.on_fill(fill("5", 10, "0.500", "5.000000"), 0)
    assert summary(out) == [("TRADE", "PARTIALLY_FILLED", "0.500", "1.500", "15.000000", 10)]
    out = f.on_order(order("5", "cancelled", "1.500", "15.000000", created=old), 0)
    assert summary(out) == [("CANCELED", "CANCELED", "0.000", "1.500", "15.000000", -1)]
    # an old order cancelled without having been seen: only its end
    out = f.on_order(order("6", "cancelled", "0.000", "0.000000", created=old), 0)
    assert summary(out) == [("CANCELED", "CANCELED", "0.000", "0.000", "0.000000", -1)]
    assert out[0]["c"] == "c6" and out[0]["i"] == 6 and out[0]["s"] == "SOLUSDC" and out[0]["S"] == "BUY"


def test_account_position() -> None:
    assert account_position([{"asset": "SOL", "available": "1.000000000", "locked": "0.500000000"}], 42) == {
        "e": "outboundAccountPosition", "E": 42, "u": 42, "B": [{"a": "SOL", "f": "1.000000000", "l": "0.500000000"}]}
