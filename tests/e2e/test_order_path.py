"""The order path end to end: API and engine as real processes, real Redis, signed HTTP.

Amounts below are exact: SOL/USDC has tick 0.01, lot 0.001, SOL 9 decimals, USDC 6,
maker fee 10 bps, taker fee 20 bps, fees taken from what each side receives.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cryptex_client import CryptexClient
from cryptex_common import keys, redis_client
from cryptex_common.auth import sign
from cryptex_common.ledger import Ledger
from cryptex_common.markets import MarketSpec
from cryptex_common.registry import register_market
from cryptex_launcher.stack import Stack

SOL = "SOL/USDC"


async def funded(admin: CryptexClient, **funds: str) -> CryptexClient:
    return await admin.new_funded_user(funds, tx_prefix=uuid.uuid4().hex[:8])


async def balances(client: CryptexClient) -> dict[str, dict[str, str]]:
    return await client.balance_map()


async def stream_len(stack: Stack, symbol: str = SOL) -> int:
    redis = redis_client.connect(stack.redis_url, "tests")
    try:
        return int(await redis.xlen(keys.commands_stream(symbol)))
    finally:
        await redis.aclose()


async def test_the_seed_body_is_accepted_as_written(admin: CryptexClient) -> None:
    buyer = await funded(admin, USDC="240000")
    r = await buyer.place_order(kind="buy", type="limit", price=12000, quantity=20, market="sol/usdc")
    assert r.status == 200, r
    assert r.body["order"]["status"] == "new"
    assert r.body["order"]["price"] == "12000.00" and r.body["order"]["quantity"] == "20.000"
    assert (await balances(buyer))["USDC"] == {"available": "0.000000", "locked": "240000.000000"}
    await buyer.cancel_all(SOL)


async def test_crossing_orders_fill_at_the_makers_price_with_exact_fees(admin: CryptexClient) -> None:
    seller = await funded(admin, SOL="10")
    buyer = await funded(admin, USDC="10000")
    r = await seller.place_order(side="sell", type="limit", price="100", quantity="2", market=SOL)
    assert r.status == 200 and r.body["order"]["status"] == "new"
    r = await buyer.place_order(side="buy", type="limit", price="101", quantity="3", market=SOL)
    assert r.status == 200, r
    order = r.body["order"]
    assert order["status"] == "partially_filled" and order["executedQty"] == "2.000"
    [fill] = r.body["fills"]
    assert fill["price"] == "100.00" and fill["quantity"] == "2.000"
    assert fill["fee"] == "0.004000000" and fill["feeAsset"] == "SOL" and fill["liquidity"] == "taker"
    # buyer: locked 303, paid 200, 2 of price improvement released, 101 still locked
    assert (await balances(buyer)) == {
        "USDC": {"available": "9699.000000", "locked": "101.000000"},
        "SOL": {"available": "1.996000000", "locked": "0.000000000"},
    }
    # seller: received 200 USDC less the 10 bps maker fee
    assert (await balances(seller)) == {
        "SOL": {"available": "8.000000000", "locked": "0.000000000"},
        "USDC": {"available": "199.800000", "locked": "0.000000"},
    }
    r = await buyer.cancel_order(order["orderId"])
    assert r.status == 200 and r.body["order"]["status"] == "cancelled"
    assert (await balances(buyer))["USDC"] == {"available": "9800.000000", "locked": "0.000000"}


async def test_time_in_force_ioc_fok_and_market_orders(admin: CryptexClient) -> None:
    maker = await funded(admin, SOL="10", USDC="10000")
    taker = await funded(admin, SOL="10", USDC="10000")
    await maker.place_order(side="sell", type="limit", price="200", quantity="1", market=SOL)
    await maker.place_order(side="sell", type="limit", price="201", quantity="1", market=SOL)

    fok = await taker.place_order(side="buy", type="limit", price="201", quantity="3",
                                  timeInForce="FOK", market=SOL)
    assert fok.status == 200 and fok.body["order"]["status"] == "expired" and fok.body["fills"] == []
    assert (await balances(taker))["USDC"] == {"available": "10000.000000", "locked": "0.000000"}

    ioc = await taker.place_order(side="buy", type="limit", price="200", quantity="3",
                                  timeInForce="IOC", market=SOL)
    assert ioc.body["order"]["status"] == "expired" and ioc.body["order"]["executedQty"] == "1.000"

    mkt = await taker.place_order(side="buy", type="market", quoteQuantity="100.5", market=SOL)
    assert mkt.status == 200, mkt
    assert mkt.body["order"]["executedQty"] == "0.500" and mkt.body["fills"][0]["price"] == "201.00"
    assert mkt.body["order"]["executedQuoteQty"] == "100.500000"

    sell = await taker.place_order(side="sell", type="market", quantity="1", market=SOL)
    assert sell.body["order"]["status"] == "expired"  # no bids: nothing to sell into
    assert (await balances(taker))["SOL"]["locked"] == "0.000000000"
    await maker.cancel_all(SOL)


async def test_post_only_that_would_take_is_rejected_and_released(admin: CryptexClient) -> None:
    maker = await funded(admin, SOL="5")
    taker = await funded(admin, USDC="1000")
    await maker.place_order(side="sell", type="limit", price="150", quantity="1", market=SOL)
    r = await taker.place_order(side="buy", type="limit", price="150", quantity="1", postOnly=True,
                                market=SOL)
    assert r.status == 422 and r.body["code"] == "POST_ONLY_WOULD_TAKE"
    assert r.body["order"]["status"] == "rejected"
    assert (await balances(taker))["USDC"] == {"available": "1000.000000", "locked": "0.000000"}
    await maker.cancel_all(SOL)


async def test_self_trade_prevention_expires_the_resting_order(admin: CryptexClient) -> None:
    user = await funded(admin, SOL="5", USDC="1000")
    resting = await user.place_order(side="sell", type="limit", price="90", quantity="1", market=SOL)
    r = await user.place_order(side="buy", type="limit", price="90", quantity="1", market=SOL)
    assert r.status == 200 and r.body["fills"] == [] and r.body["order"]["status"] == "new"
    old = await user.get_order(resting.body["order"]["orderId"])
    assert old.body["status"] == "expired"
    taker_first = await user.place_order(side="sell", type="limit", price="90", quantity="1",
                                         selfTradePrevention="expire_taker", market=SOL)
    assert taker_first.body["order"]["status"] == "expired"
    assert (await balances(user))["SOL"] == {"available": "5.000000000", "locked": "0.000000000"}
    await user.cancel_all(SOL)
    assert (await balances(user))["USDC"] == {"available": "1000.000000", "locked": "0.000000"}


async def test_cancel_rules(admin: CryptexClient) -> None:
    alice = await funded(admin, USDC="1000")
    bob = await funded(admin, SOL="5")
    placed = await alice.place_order(side="buy", type="limit", price="10", quantity="1", market=SOL)
    order_id = placed.body["order"]["orderId"]
    other = await bob.cancel_order(order_id)
    assert other.status == 404 and other.body["code"] == "ORDER_NOT_FOUND"
    done = await alice.cancel_order(order_id)
    assert done.status == 200 and done.body["order"]["status"] == "cancelled"
    again = await alice.cancel_order(order_id)
    assert again.status == 409 and again.body["code"] == "ORDER_NOT_OPEN"
    # a filled order cannot be cancelled
    sell = await bob.place_order(side="sell", type="limit", price="10", quantity="1", market=SOL)
    await alice.place_order(side="buy", type="limit", price="10", quantity="1", market=SOL)
    filled = await bob.cancel_order(sell.body["order"]["orderId"])
    assert filled.status == 409 and filled.body["code"] == "ORDER_NOT_OPEN"
    missing = await alice.cancel_order("999999999")
    assert missing.status == 404


async def test_client_order_id_replay_returns_the_first_order(admin: CryptexClient) -> None:
    user = await funded(admin, USDC="1000")
    body = {"side": "buy", "type": "limit", "price": "10", "quantity": "1", "market": SOL,
            "clientOrderId": "my-order-1"}
    first = await user.place_order(**body)
    again = await user.place_order(**body)
    assert again.status == 200 and again.body["duplicate"] is True
    assert again.body["order"]["orderId"] == first.body["order"]["orderId"]
    assert (await balances(user))["USDC"] == {"available": "990.000000", "locked": "10.000000"}
    by_coid = await user.get_order(client_order_id="my-order-1")
    assert by_coid.body["orderId"] == first.body["order"]["orderId"]
    assert (await user.cancel_order(client_order_id="my-order-1")).status == 200


async def test_two_markets_share_one_usdc_balance_without_overspend(admin: CryptexClient) -> None:
    user = await funded(admin, USDC="1000")
    sol = await user.place_order(side="buy", type="limit", price="100", quantity="6", market=SOL)
    btc = await user.place_order(side="buy", type="limit", price="60000", quantity="0.01",
                                 market="BTC_USDC")
    assert sol.status == 200 and btc.status == 422 and btc.body["code"] == "INSUFFICIENT_FUNDS"
    ok = await user.place_order(side="buy", type="limit", price="40000", quantity="0.01", market="btc-usdc")
    assert ok.status == 200, ok
    assert (await balances(user))["USDC"] == {"available": "0.000000", "locked": "1000.000000"}
    open_orders = await user.open_orders()
    assert {o["market"] for o in open_orders.body} == {"SOL/USDC", "BTC/USDC"}
    assert (await user.cancel_all()).status == 200
    assert (await balances(user))["USDC"] == {"available": "1000.000000", "locked": "0.000000"}


BAD_ORDERS = [
    ({"price": "-1"}, 400, "INVALID_FIELD", "price"),
    ({"price": "0"}, 400, "INVALID_FIELD", "price"),
    ({"price": "NaN"}, 400, "INVALID_FIELD", "price"),
    ({"price": "Infinity"}, 400, "INVALID_FIELD", "price"),
    ({"price": "1e3"}, 400, "INVALID_FIELD", "price"),
    ({"price": "100.001"}, 422, "OFF_TICK", "price"),
    ({"quantity": "0.0001"}, 422, "OFF_LOT", "quantity"),
    ({"quantity": "1.00000000000000000001"}, 422, "OFF_LOT", "quantity"),
    ({"quantity": "0"}, 400, "INVALID_FIELD", "quantity"),
    ({"quantity": "100001"}, 422, "QUANTITY_TOO_LARGE", "quantity"),
    ({"quantity": "0.001", "price": "1"}, 422, "NOTIONAL_TOO_SMALL", "quantity"),
    ({"price": "9" * 40}, 400, "AMOUNT_TOO_LARGE", "price"),
    ({"market": "DOGE/USDC"}, 400, "UNKNOWN_MARKET", "market"),
    ({"kind": "hold"}, 400, "INVALID_FIELD", "kind"),
    ({"type": "stop"}, 400, "INVALID_FIELD", "type"),
    ({"timeInForce": "GTX"}, 400, "INVALID_FIELD", "timeInForce"),
    ({"price": None}, 400, "MISSING_FIELD", "price"),
    ({"market": None}, 400, "MISSING_FIELD", "market"),
    ({"leverage": 10}, 400, "UNKNOWN_FIELD", "leverage"),
    ({"postOnly": "yes"}, 400, "INVALID_FIELD", "postOnly"),
    ({"clientOrderId": "x" * 37}, 400, "INVALID_FIELD", "clientOrderId"),
    ({"price": True}, 400, "INVALID_FIELD", "price"),
    ({"quantity": "99999"}, 422, "INSUFFICIENT_FUNDS", "quantity"),
]


@pytest.mark.parametrize(("change", "status", "code", "field"), BAD_ORDERS)
async def test_bad_orders_are_refused_and_change_nothing(
    admin: CryptexClient, order_stack: Stack, change: dict, status: int, code: str, field: str
) -> None:
    user = await funded(admin, USDC="1000")
    body = {"kind": "buy", "type": "limit", "price": "10", "quantity": "1", "market": SOL, **change}
    body = {k: v for k, v in body.items() if v is not None}
    before_len = await stream_len(order_stack)
    r = await user.place_order(**body)
    assert (r.status, r.body["code"], r.body.get("field")) == (status, code, field), r
    assert field in r.body["message"] or code in ("UNKNOWN_MARKET", "INSUFFICIENT_FUNDS")
    assert await stream_len(order_stack) == before_len
    assert (await balances(user))["USDC"] == {"available": "1000.000000", "locked": "0.000000"}


async def test_raw_body_problems(admin: CryptexClient, order_stack: Stack) -> None:
    user = await funded(admin, USDC="10")
    for raw, status, code in [
        (b"{not json", 400, "INVALID_JSON"),
        (b"[1, 2]", 400, "INVALID_JSON"),
        (b'{"price": NaN}', 400, "INVALID_JSON"),
        (b'{"a": "' + b"x" * 20_000 + b'"}', 413, "BODY_TOO_LARGE"),
    ]:
        r = await user.request("POST", "/order", raw_body=raw, signed=True)
        assert (r.status, r.body["code"]) == (status, code), (raw[:20], r)
    assert (await balances(user))["USDC"]["available"] == "10.000000"


async def test_authentication_failures(admin: CryptexClient) -> None:
    user = await funded(admin, USDC="10")
    assert (await admin.request("GET", "/balances")).body["code"] == "UNAUTHORIZED"
    path = "/api/v1/balances"
    ts = str(int(time.time() * 1000))
    good = {"X-CX-KEY": user.api_key, "X-CX-TS": ts, "X-CX-SIGN": sign(user.api_secret, ts, "GET", path)}
    cases = [
        ({**good, "X-CX-SIGN": "0" * 64}, "BAD_SIGNATURE"),
        ({**good, "X-CX-KEY": "nope"}, "UNAUTHORIZED"),
        ({**good, "X-CX-TS": str(int(ts) - 60_000),
          "X-CX-SIGN": sign(user.api_secret, int(ts) - 60_000, "GET", path)}, "STALE_TIMESTAMP"),
    ]
    for headers, code in cases:
        r = await admin.request("GET", "/balances", headers=headers)
        assert (r.status, r.body["code"]) == (401, code)
    first = await admin.request("GET", "/balances", headers=good)
    replay = await admin.request("GET", "/balances", headers=good)
    assert first.status == 200 and (replay.status, replay.body["code"]) == (401, "REPLAYED_REQUEST")


async def test_admin_routes_need_the_token_and_transfers_are_idempotent(admin: CryptexClient) -> None:
    stranger = CryptexClient(admin.base_url, admin_token="wrong", session=admin.session)
    assert (await stranger.create_user()).status == 401
    user = await funded(admin)
    uid = user.user_id  # type: ignore[attr-defined]
    tx = uuid.uuid4().hex
    assert (await admin.deposit(uid, "SOL", "1.5", tx)).body["duplicate"] is False
    assert (await admin.deposit(uid, "SOL", "1.5", tx)).body["duplicate"] is True
    assert (await admin.deposit(uid, "SOL", "2", tx)).status == 409
    assert (await admin.deposit(uid, "SOL", "0.0000000001", "x" + tx)).status == 400
    assert (await admin.withdraw(uid, "SOL", "2", "w" + tx)).status == 422
    assert (await admin.withdraw(uid, "SOL", "0.5", "w" + tx)).status == 200
    assert (await balances(user))["SOL"]["available"] == "1.000000000"


async def test_halted_market_answers_503(admin: CryptexClient, order_stack: Stack) -> None:
    redis = redis_client.connect(order_stack.redis_url, "tests")
    halted = MarketSpec.model_validate({
        "symbol": "ETH/USDC", "baseAsset": "ETH", "baseDecimals": 8, "quoteAsset": "USDC",
        "quoteDecimals": 6, "tickSize": "0.01", "lotSize": "0.0001", "minQuantity": "0.0001",
        "maxQuantity": "1000", "state": "halted",
    })
    await register_market(redis, halted)
    await redis.aclose()
    user = await funded(admin, USDC="100")
    for _ in range(50):  # the API reloads markets on markets:changed
        r = await user.place_order(side="buy", type="limit", price="10", quantity="1", market="ETH/USDC")
        if r.body.get("code") != "UNKNOWN_MARKET":
            break
        await asyncio.sleep(0.05)
    assert (r.status, r.body["code"]) == (503, "MARKET_HALTED")
    assert (await balances(user))["USDC"]["locked"] == "0.000000"


async def test_rate_limit_answers_429_with_retry_after(admin: CryptexClient) -> None:
    user = await funded(admin)
    statuses = []
    for i in range(80):
        # a distinct query per call: two identical requests signed in the same millisecond
        # are indistinguishable from a replay and are refused as one (decision 0006)
        r = await user.request("GET", "/balances", params={"n": i}, signed=True)
        statuses.append(r.status)
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1 and r.body["code"] == "RATE_LIMITED"
            break
    assert 429 in statuses


async def test_public_routes(admin: CryptexClient) -> None:
    markets = await admin.markets()
    assert {m["symbol"] for m in markets.body} >= {"SOL/USDC", "BTC/USDC"}
    depth = await admin.depth("sol_usdc", limit=5)
    assert depth.status == 200 and "lastUpdateId" in depth.body
    assert (await admin.depth("sol_usdc", limit=5000)).status == 400
    assert (await admin.request("GET", "/time")).body["serverTime"] > 0
    spec = (await admin.request("GET", "/openapi.json")).body
    assert spec["openapi"].startswith("3.") and "/order" in spec["paths"]
    assert (await admin.ticker("SOL/USDC")).status == 200
    assert (await admin.request("GET", "/nope")).status == 404


async def test_conservation_after_everything(admin: CryptexClient, order_stack: Stack) -> None:
    """Runs last in this module: every asset is conserved after all the flows above."""
    await asyncio.sleep(0.3)
    redis = redis_client.connect(order_stack.redis_url, "tests")
    report = await Ledger(redis).conservation_report()
    await redis.aclose()
    for asset, row in report.items():
        assert row["held"] == row["deposits"] - row["withdrawals"], (asset, row)
