"""The facade over raw HTTP, sending exactly what each case needs: Binance signing (query
string or form body), replay and recvWindow rules, every order response type, IOC/FOK
remainders, order/test, listen keys, public data and the request-weight limit."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
import requests

from tests.binance.conftest import Live, eventually
from tests.binance.http import BinanceHttp

pytestmark = pytest.mark.slow
SOL = "SOLUSDC"


def limit(side: str, qty: str, price: str, tif: str = "GTC", **more: str) -> dict[str, str]:
    return {"symbol": SOL, "side": side, "type": "LIMIT", "timeInForce": tif, "quantity": qty, "price": price, **more}


@pytest.mark.parametrize("in_body", [False, True], ids=["query", "body"])
def test_signed_params_in_query_or_body(live: Live, in_body: bool) -> None:
    user = live.fund({"USDC": "100"})
    http = BinanceHttp(live.base, user)
    placed = http.call("POST", "order", limit("BUY", "1", "10", newOrderRespType="RESULT"), signed=True,
                       in_body=in_body)
    assert placed.status_code == 200, placed.text
    order = placed.json()
    assert isinstance(order["orderId"], int) and order["status"] == "NEW" and order["type"] == "LIMIT"
    assert order["origQty"] == "1.000" and order["price"] == "10.00" and order["clientOrderId"]
    got = http.call("GET", "order", {"symbol": SOL, "orderId": order["orderId"]}, signed=True)
    assert got.json()["orderId"] == order["orderId"] and got.json()["isWorking"] is True
    by_coid = http.call("GET", "order", {"symbol": SOL, "origClientOrderId": order["clientOrderId"]}, signed=True)
    assert by_coid.json()["orderId"] == order["orderId"]
    ref = {"origClientOrderId": order["clientOrderId"]} if in_body else {"orderId": order["orderId"]}
    gone = http.call("DELETE", "order", {"symbol": SOL, **ref}, signed=True, in_body=in_body)
    assert gone.status_code == 200 and gone.json()["status"] == "CANCELED", gone.text
    assert gone.json()["orderId"] == order["orderId"] and gone.json()["origClientOrderId"] == order["clientOrderId"]
    assert "X-MBX-USED-WEIGHT-1M" in gone.headers and int(gone.headers["X-MBX-USED-WEIGHT-1M"]) >= 1
    assert live.balances(user)["USDC"] == {"available": "100.000000", "locked": "0.000000"}


def test_response_types_and_fills(live: Live) -> None:
    maker, taker = BinanceHttp(live.base, live.fund({"SOL": "5"})), BinanceHttp(live.base, live.fund({"USDC": "900"}))
    ask = maker.call("POST", "order", limit("SELL", "3", "100", newOrderRespType="ACK"), signed=True).json()
    assert set(ask) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    full = taker.call("POST", "order", limit("BUY", "1", "100"), signed=True).json()
    assert full["status"] == "FILLED" and full["executedQty"] == "1.000" and full["cummulativeQuoteQty"] == "100.000000"
    assert full["fills"] == [{"price": "100.00", "qty": "1.000", "commission": "0.002000000",
                              "commissionAsset": "SOL", "tradeId": full["fills"][0]["tradeId"]}]
    result = taker.call("POST", "order", limit("BUY", "1", "100", newOrderRespType="RESULT"), signed=True).json()
    assert result["status"] == "FILLED" and "fills" not in result
    ioc = taker.call("POST", "order", limit("BUY", "2", "100", "IOC"), signed=True).json()
    assert ioc["status"] == "EXPIRED" and ioc["executedQty"] == "1.000"  # the remainder of an IOC
    fok = taker.call("POST", "order", limit("BUY", "2", "100", "FOK"), signed=True).json()
    assert fok["status"] == "EXPIRED" and fok["executedQty"] == "0.000"
    orders = eventually(lambda: len(r := taker.call("GET", "allOrders", {"symbol": SOL}, signed=True).json()) == 4
                        and r)
    assert [o["status"] for o in orders] == ["FILLED", "FILLED", "EXPIRED", "EXPIRED"]
    assert [o["orderId"] for o in orders] == sorted(o["orderId"] for o in orders)


def test_limit_maker_and_order_test(live: Live) -> None:
    maker, taker = BinanceHttp(live.base, live.fund({"SOL": "5"})), BinanceHttp(live.base, live.fund({"USDC": "900"}))
    ask = maker.call("POST", "order", limit("SELL", "1", "150"), signed=True).json()
    before = live.stream_lengths()
    would_take = {"symbol": SOL, "side": "BUY", "type": "LIMIT_MAKER", "quantity": "1", "price": "150"}
    assert taker.call("POST", "order/test", would_take, signed=True).json() == {}  # the test does not see the book
    assert live.stream_lengths() == before  # order/test queues nothing
    r = taker.call("POST", "order", would_take, signed=True)
    assert r.status_code == 400 and r.json() == {"code": -2010, "msg": "Order would immediately match and take."}
    rests = taker.call("POST", "order", {**would_take, "price": "149.99"}, signed=True).json()
    assert rests["type"] == "LIMIT_MAKER" and rests["status"] == "NEW"
    too_big = taker.call("POST", "order/test", {**would_take, "price": "149.99", "quantity": "100"}, signed=True)
    assert too_big.json() == {}  # as on Binance, funds are checked only by a real order
    maker.call("DELETE", "order", {"symbol": SOL, "orderId": ask["orderId"]}, signed=True)
    taker.call("DELETE", "openOrders", {"symbol": SOL}, signed=True)


def test_replay_refused_only_when_state_changes(live: Live) -> None:
    user = live.fund({"USDC": "100"})
    http = BinanceHttp(live.base, user)
    read = http.signed_query({"symbol": SOL})
    assert http.call("GET", "openOrders", raw=read).status_code == 200
    assert http.call("GET", "openOrders", raw=read).status_code == 200  # a read may be repeated
    for window in ("5000", "30000"):  # 30 s outlives the native guard: the facade keeps it longer
        order = http.signed_query(limit("BUY", "1", "10", recvWindow=window))
        assert http.call("POST", "order", raw=order).status_code == 200
        again = http.call("POST", "order", raw=order)
        assert again.status_code == 400 and again.json()["code"] == -1022, again.text
    open_orders = http.call("GET", "openOrders", {"symbol": SOL}, signed=True).json()
    assert len(open_orders) == 2
    cancel = http.signed_query({"symbol": SOL, "orderId": open_orders[0]["orderId"]})
    assert http.call("DELETE", "order", raw=cancel).json()["status"] == "CANCELED"
    assert http.call("DELETE", "order", raw=cancel).json()["code"] == -1022  # refused as a replay first
    cancel_all = http.signed_query({"symbol": SOL})
    assert len(http.call("DELETE", "openOrders", raw=cancel_all).json()) == 1
    assert http.call("DELETE", "openOrders", raw=cancel_all).json()["code"] == -1022


def test_bad_input_changes_nothing(live: Live) -> None:
    user = live.fund({"USDC": "100", "SOL": "1"})
    http = BinanceHttp(live.base, user)
    balances, streams = live.balances(user), live.stream_lengths()
    now = int(time.time() * 1000)
    cases: list[tuple[dict[str, str], dict[str, Any], int]] = [
        ({"symbol": SOL, "side": "BUY", "type": "LIMIT", "quantity": "1", "price": "10"}, {}, -1102),  # no timeInForce
        (limit("BUY", "1", "abc"), {}, -1100),
        (limit("BUY", "1", "10", "GTX"), {}, -1115),
        ({**limit("BUY", "1", "10"), "side": "HOLD"}, {}, -1117),
        ({**limit("BUY", "1", "10"), "type": "STOP"}, {}, -1116),
        ({**limit("BUY", "1", "10"), "stopPrice": "9"}, {}, -1106),
        ({**limit("BUY", "1", "10"), "foo": "1"}, {}, -1104),
        (limit("BUY", "1", "10.005"), {}, -1013),  # off the tick grid: PRICE_FILTER
        (limit("BUY", "1.0005", "10"), {}, -1013),  # off the lot grid: LOT_SIZE
        (limit("BUY", "0.01", "10"), {}, -1013),  # notional under 1 USDC: NOTIONAL
        (limit("BUY", "100", "10"), {}, -2010),  # 1000 USDC > 100: insufficient balance
        ({**limit("BUY", "1", "10"), "symbol": "DOGEUSDC"}, {}, -1121),
        (limit("BUY", "1", "10"), {"secret": "f" * 64}, -1022),
        (limit("BUY", "1", "10"), {"timestamp": now - 60_000}, -1021),
        (limit("BUY", "1", "10"), {"timestamp": now + 5_000}, -1021),
        ({**limit("BUY", "1", "10"), "recvWindow": "60001"}, {}, -1131),
    ]
    for params, sign, code in cases:
        r = http.call("POST", "order", params, signed=True, **sign)
        assert r.status_code == 400 and r.json()["code"] == code, (params, sign, r.text)
    refused = (limit("BUY", "1", "10.005"), limit("BUY", "1.0005", "10"), limit("BUY", "0.01", "10"),
               limit("BUY", "100", "10"))
    messages = {http.call("POST", "order", p, signed=True).json()["msg"] for p in refused}
    assert messages == {"Filter failure: PRICE_FILTER", "Filter failure: LOT_SIZE", "Filter failure: NOTIONAL",
                        "Account has insufficient balance for requested action."}
    unknown_key = http.call("POST", "order", limit("BUY", "1", "10"), signed=True, key="nosuchkey")
    assert unknown_key.status_code == 401 and unknown_key.json()["code"] == -2015
    no_sig = http.call("GET", "account", {"timestamp": now})
    assert no_sig.json()["code"] == -1102
    missing = http.call("DELETE", "order", {"symbol": SOL}, signed=True)
    assert missing.json()["code"] == -1102
    unknown = http.call("DELETE", "order", {"symbol": SOL, "orderId": 987654321}, signed=True)
    assert unknown.json() == {"code": -2011, "msg": "Unknown order sent."}
    lookup = http.call("GET", "order", {"symbol": SOL, "orderId": 987654321}, signed=True)
    assert lookup.json() == {"code": -2013, "msg": "Order does not exist."}
    assert live.balances(user) == balances and live.stream_lengths() == streams


def test_market_data_shapes(live: Live) -> None:
    http = BinanceHttp(live.base)
    assert http.call("GET", "ping").json() == {}
    assert abs(http.call("GET", "time").json()["serverTime"] - time.time() * 1000) < 5_000
    info = http.call("GET", "exchangeInfo", {"symbol": SOL}).json()
    sol = info["symbols"][0]
    assert sol["status"] == "TRADING" and sol["orderTypes"] == ["LIMIT", "LIMIT_MAKER", "MARKET"]
    assert {f["filterType"] for f in sol["filters"]} == {"PRICE_FILTER", "LOT_SIZE", "MARKET_LOT_SIZE",
                                                         "MIN_NOTIONAL", "NOTIONAL"}
    depth = http.call("GET", "depth", {"symbol": SOL, "limit": 5000})
    assert depth.status_code == 200 and depth.headers["X-MBX-USED-WEIGHT-1M"]
    assert http.call("GET", "depth", {"symbol": SOL, "limit": 5001}).json()["code"] == -1100

    native = requests.get(f"{live.base}/api/v1/depth", params={"market": "SOL/USDC"}, timeout=10).json()
    assert depth.json()["lastUpdateId"] == native["lastUpdateId"]  # the engine's depth sequence
    assert http.call("GET", "klines", {"symbol": SOL, "interval": "3m"}).json() == {"code": -1120,
                                                                                     "msg": "Invalid interval."}
    assert http.call("GET", "trades", {"symbol": "NOPE"}).json() == {"code": -1121, "msg": "Invalid symbol."}
    for path in ("ticker/24hr", "ticker/price", "ticker/bookTicker"):
        one, every = http.call("GET", path, {"symbol": SOL}).json(), http.call("GET", path).json()
        assert one["symbol"] == SOL and {t["symbol"] for t in every} >= {SOL, "BTCUSDC"}
        listed = http.call("GET", path, {"symbols": '["BTCUSDC"]'}).json()
        assert [t["symbol"] for t in listed] == ["BTCUSDC"]
    assert http.call("GET", "avgPrice", {"symbol": SOL}).json()["mins"] == 5
    assert isinstance(http.call("GET", "aggTrades", {"symbol": SOL}).json(), list)


def test_klines_have_twelve_fields_with_taker_volumes(live: Live) -> None:
    maker, taker = BinanceHttp(live.base, live.fund({"SOL": "5"})), BinanceHttp(live.base, live.fund({"USDC": "900"}))
    maker.call("POST", "order", limit("SELL", "2", "90"), signed=True)
    taker.call("POST", "order", limit("BUY", "2", "90"), signed=True)
    row = eventually(lambda: (k := BinanceHttp(live.base).call("GET", "klines", {"symbol": SOL, "interval": "1m"})
                              .json()) and k[-1][4] == "90.00" and k[-1])
    assert len(row) == 12 and row[4] == "90.00" and row[6] == row[0] + 59_999
    assert Decimal(row[9]) >= Decimal("2") and Decimal(row[10]) >= Decimal("180") and row[11] == "0"


def test_user_data_stream_listen_keys(live: Live) -> None:
    user = live.fund({"USDC": "1"})
    http = BinanceHttp(live.base, user)
    key = http.call("POST", "userDataStream").json()["listenKey"]
    assert len(key) == 64

    async def stored() -> tuple[bytes | None, int]:
        r = aioredis.Redis.from_url(live.redis_url)
        try:
            return await r.get(f"listenkey:{key}"), await r.ttl(f"listenkey:{key}")
        finally:
            await r.aclose()
    owner, ttl = asyncio.run(stored())
    assert owner == user.user_id.encode() and 3500 < ttl <= 3600
    assert http.call("PUT", "userDataStream", {"listenKey": key}).json() == {}
    other = BinanceHttp(live.base, live.fund({"USDC": "1"}))
    assert other.call("DELETE", "userDataStream", {"listenKey": key}, in_body=True).json()["code"] == -1125
    assert http.call("DELETE", "userDataStream", {"listenKey": key}, in_body=True).json() == {}
    assert asyncio.run(stored())[0] is None
    assert http.call("PUT", "userDataStream", {"listenKey": key}).json() == {
        "code": -1125, "msg": "This listenKey does not exist."}
    assert BinanceHttp(live.base).call("POST", "userDataStream").json()["code"] == -2014


def test_request_weight_limit(live: Live) -> None:
    """Another loopback address is another client: 6000 weight per minute, then 429."""
    http = BinanceHttp(live.base, source_address="127.0.0.2")
    used = 0
    for _ in range(30):  # depth limit=5000 weighs 250
        r = http.call("GET", "depth", {"symbol": SOL, "limit": 5000})
        if r.status_code == 429:
            break
        used = int(r.headers["X-MBX-USED-WEIGHT-1M"])
    else:
        pytest.fail("never limited")
    assert r.json()["code"] == -1003 and int(r.headers["Retry-After"]) >= 1
    assert used > 6000 - 250 or time.gmtime().tm_sec < 2  # (a minute may have turned during the loop)
    assert BinanceHttp(live.base).call("GET", "ping").status_code == 200  # other addresses are not limited
