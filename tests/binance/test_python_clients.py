"""python-binance and binance-connector against the facade: exchange info, depth, new /
get / cancel order, account; only their base URLs changed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from binance.client import Client
from binance.exceptions import BinanceAPIException
from binance.spot import Spot

from tests.binance.clients import record_requests
from tests.binance.conftest import Live

pytestmark = pytest.mark.slow
SOL = "SOLUSDC"


def python_binance(live: Live, key: str, secret: str) -> Client:
    client = Client(key, secret, ping=False)
    client.API_URL = f"{live.base}/api"  # the one base URL of the spot API
    record_requests(client.session)
    client.ping()
    return client


def test_python_binance(live: Live) -> None:
    user = live.fund({"USDC": "500", "SOL": "2"})
    client = python_binance(live, user.api_key, user.api_secret)
    info = client.get_symbol_info(SOL)
    assert info is not None and info["baseAsset"] == "SOL" and info["quoteAsset"] == "USDC"
    tick = next(f for f in info["filters"] if f["filterType"] == "PRICE_FILTER")["tickSize"]
    assert Decimal(tick) == Decimal("0.01")
    assert set(client.get_order_book(symbol=SOL, limit=10)) == {"lastUpdateId", "bids", "asks"}
    order = client.create_order(symbol=SOL, side="BUY", type="LIMIT", timeInForce="GTC", quantity="1.5",
                                price="20.01")
    assert order["status"] == "NEW" and order["origQty"] == "1.500" and order["fills"] == []
    got = client.get_order(symbol=SOL, orderId=order["orderId"])
    assert got["price"] == "20.01" and got["status"] == "NEW"
    assert [o["orderId"] for o in client.get_open_orders(symbol=SOL)] == [order["orderId"]]
    account = client.get_account()
    usdc = next(b for b in account["balances"] if b["asset"] == "USDC")
    assert Decimal(usdc["locked"]) == Decimal("30.015") and Decimal(usdc["free"]) == Decimal("469.985")
    cancelled = client.cancel_order(symbol=SOL, orderId=order["orderId"])
    assert cancelled["status"] == "CANCELED" and cancelled["orderId"] == order["orderId"]
    with pytest.raises(BinanceAPIException) as refused:
        client.create_order(symbol=SOL, side="BUY", type="LIMIT", timeInForce="GTC", quantity="100", price="20")
    assert refused.value.code == -2010 and refused.value.message == \
        "Account has insufficient balance for requested action."
    assert live.balances(user)["USDC"]["available"] == "500.000000"


def test_binance_connector(live: Live) -> None:
    user = live.fund({"SOL": "3"})
    spot = Spot(user.api_key, user.api_secret, base_url=live.base)  # signs everything into the query string
    record_requests(spot.session)
    info = spot.exchange_info(symbol=SOL)
    assert [s["symbol"] for s in info["symbols"]] == [SOL]
    assert "lastUpdateId" in spot.depth(SOL, limit=5)
    order = spot.new_order(symbol=SOL, side="SELL", type="LIMIT", timeInForce="GTC", quantity="0.75",
                           price="999.99", newOrderRespType="FULL")
    assert order["status"] == "NEW" and order["side"] == "SELL"
    assert spot.get_order(SOL, orderId=order["orderId"])["origQty"] == "0.750"
    sol = next(b for b in spot.account()["balances"] if b["asset"] == "SOL")
    assert Decimal(sol["locked"]) == Decimal("0.75")
    assert spot.cancel_order(SOL, orderId=order["orderId"])["status"] == "CANCELED"
    assert live.balances(user)["SOL"] == {"available": "3.000000000", "locked": "0.000000000"}
