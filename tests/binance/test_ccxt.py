"""ccxt (sync and async) against the facade on a real stack: market data, the account,
orders of every supported kind, two users crossing with exact amounts and fees, and each
error class mapped to its ccxt exception."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import ccxt
import pytest
import redis.asyncio as aioredis

from cryptex_common.markets import MarketSpec
from cryptex_common.registry import register_market
from tests.binance.clients import ccxt_async, ccxt_sync
from tests.binance.conftest import Live, eventually

pytestmark = pytest.mark.slow
SYMBOL = "SOL/USDC"


def test_load_markets_equals_the_spec(live: Live) -> None:
    ex = ccxt_sync(live.base)
    markets = ex.load_markets()
    assert set(markets) >= {"SOL/USDC", "BTC/USDC"}
    for spec in live.stack.markets:
        m = markets[spec.symbol]
        assert m["spot"] and m["active"] and m["id"] == spec.symbol.replace("/", "")
        assert m["base"] == spec.base_asset and m["quote"] == spec.quote_asset
        assert Decimal(str(m["precision"]["price"])) == Decimal(spec.tick_size)
        assert Decimal(str(m["precision"]["amount"])) == Decimal(spec.lot_size)
        assert Decimal(str(m["limits"]["amount"]["min"])) == Decimal(spec.min_quantity)
        assert Decimal(str(m["limits"]["amount"]["max"])) == Decimal(spec.max_quantity)
        assert Decimal(str(m["limits"]["cost"]["min"])) == Decimal(spec.min_notional)
        assert Decimal(str(m["limits"]["price"]["min"])) == Decimal(spec.tick_size)


def test_two_users_cross_with_exact_amounts_and_fees(live: Live) -> None:
    seller_user = live.fund({"SOL": "10"})
    buyer_user = live.fund({"USDC": "10000"})
    seller, buyer = ccxt_sync(live.base, seller_user), ccxt_sync(live.base, buyer_user)
    ask = seller.create_order(SYMBOL, "limit", "sell", 2, 101.5)
    assert ask["status"] == "open" and isinstance(ask["id"], str) and int(ask["id"]) > 0
    book = buyer.fetch_order_book(SYMBOL)
    assert [101.5, 2.0] in book["asks"]
    took = buyer.create_order(SYMBOL, "limit", "buy", 1.5, 101.5)
    assert took["status"] == "closed" and took["filled"] == 1.5 and took["cost"] == 152.25
    # taker fee 20 bps of the 1.5 SOL received; maker fee 10 bps of the 152.25 USDC received
    assert [(f["fee"]["cost"], f["fee"]["currency"]) for f in took["trades"]] == [(0.003, "SOL")]
    assert buyer.fetch_balance()["SOL"]["free"] == 1.497
    assert Decimal(str(buyer.fetch_balance()["USDC"]["free"])) == Decimal("10000") - Decimal("152.25")
    seller_bal = seller.fetch_balance()
    assert Decimal(str(seller_bal["USDC"]["free"])) == Decimal("152.25") - Decimal("0.15225")
    assert seller_bal["SOL"]["used"] == 0.5 and seller_bal["SOL"]["free"] == 8.0
    partial = seller.fetch_order(ask["id"], SYMBOL)
    assert partial["status"] == "open" and partial["filled"] == 1.5 and partial["remaining"] == 0.5
    mine = eventually(lambda: [t for t in buyer.fetch_my_trades(SYMBOL) if t["order"] == took["id"]])
    assert mine and mine[0]["amount"] == 1.5 and mine[0]["price"] == 101.5 and mine[0]["takerOrMaker"] == "taker"
    assert mine[0]["fee"] == {"cost": 0.003, "currency": "SOL"}
    theirs = eventually(lambda: [t for t in seller.fetch_my_trades(SYMBOL) if t["order"] == ask["id"]])
    assert theirs and theirs[0]["takerOrMaker"] == "maker" and theirs[0]["fee"]["cost"] == 0.15225
    seller.cancel_order(ask["id"], SYMBOL)


def test_fetch_balance_equals_native_balances(live: Live) -> None:
    user = live.fund({"SOL": "3.25", "USDC": "1234.5"})
    ex = ccxt_sync(live.base, user)
    ex.create_order(SYMBOL, "limit", "buy", 1, 10)
    balance = ex.fetch_balance()
    native = live.balances(user)
    for asset, row in native.items():
        assert Decimal(str(balance[asset]["free"])) == Decimal(row["available"])
        assert Decimal(str(balance[asset]["used"])) == Decimal(row["locked"])
    assert balance["USDC"]["used"] == 10.0
    ex.cancel_all_orders(SYMBOL)


def test_order_lifecycle(live: Live) -> None:
    maker_user = live.fund({"SOL": "20", "USDC": "5000"})
    ex = ccxt_sync(live.base, maker_user)
    ex.load_markets()
    coid = "t" + uuid.uuid4().hex[:20]
    rest = ex.create_order(SYMBOL, "limit", "buy", 1, 50, {"clientOrderId": coid})
    assert rest["clientOrderId"] == coid and rest["status"] == "open"
    post = ex.create_order(SYMBOL, "limit", "buy", 1, 51, {"postOnly": True})
    assert post["postOnly"] and post["status"] == "open"
    open_ids = {o["id"] for o in ex.fetch_open_orders(SYMBOL)}
    assert {rest["id"], post["id"]} <= open_ids
    fetched = ex.fetch_order(rest["id"], SYMBOL)
    assert fetched["price"] == 50 and fetched["amount"] == 1 and fetched["side"] == "buy"
    cancelled = ex.cancel_order(rest["id"], SYMBOL)
    assert cancelled["status"] == "canceled"
    assert ex.fetch_order(rest["id"], SYMBOL)["status"] == "canceled"
    all_cancelled = ex.cancel_all_orders(SYMBOL)
    assert [o["id"] for o in all_cancelled] == [post["id"]]
    assert ex.fetch_open_orders(SYMBOL) == []


def test_market_orders_by_amount_and_by_cost(live: Live) -> None:
    maker_user, taker_user = live.fund({"SOL": "10"}), live.fund({"USDC": "10000"})
    maker, taker = ccxt_sync(live.base, maker_user), ccxt_sync(live.base, taker_user)
    ask = maker.create_order(SYMBOL, "limit", "sell", 5, 120)
    by_amount = taker.create_order(SYMBOL, "market", "buy", 1)
    assert by_amount["status"] == "closed" and by_amount["filled"] == 1 and by_amount["cost"] == 120
    by_cost = taker.create_market_buy_order_with_cost(SYMBOL, 240)
    assert by_cost["status"] == "closed" and by_cost["filled"] == 2 and by_cost["cost"] == 240
    sold = maker.create_order(SYMBOL, "market", "sell", 0.5)  # nothing bid: expires unfilled
    assert sold["status"] == "expired" and sold["filled"] == 0
    maker.cancel_order(ask["id"], SYMBOL)


def test_market_data(live: Live) -> None:
    maker_user, taker_user = live.fund({"SOL": "10"}), live.fund({"USDC": "10000"})
    maker, taker = ccxt_sync(live.base, maker_user), ccxt_sync(live.base, taker_user)
    ask = maker.create_order(SYMBOL, "limit", "sell", 3, 130)
    try:  # the rest of the ask must not outlive this test: later tests read the same book
        taker.create_order(SYMBOL, "limit", "buy", 1, 130)
        ticker = eventually(lambda: (t := taker.fetch_ticker(SYMBOL))["last"] == 130 and t)  # published per interval
        assert ticker["last"] == 130 and ticker["ask"] == 130 and ticker["symbol"] == SYMBOL
        tickers = taker.fetch_tickers()
        assert set(tickers) >= {"SOL/USDC", "BTC/USDC"}
        trades = taker.fetch_trades(SYMBOL)
        assert trades and trades[-1]["price"] == 130 and trades[-1]["amount"] == 1 and trades[-1]["side"] == "buy"
        # dbproc writes the candle a moment after the trade: wait for this trade's close
        candles = eventually(lambda: (c := taker.fetch_ohlcv(SYMBOL, "1m")) and c[-1][4] == 130 and c)
        assert candles[-1][5] >= 1
        book = taker.fetch_order_book(SYMBOL, 5)
        assert book["asks"][0] == [130.0, 2.0] and book["nonce"] > 0
    finally:
        maker.cancel_order(ask["id"], SYMBOL)


@pytest.mark.parametrize("case", ["symbol", "funds", "grid", "unknown_order", "auth", "nonce", "post_only"])
def test_errors_map_to_ccxt_exceptions(live: Live, case: str) -> None:
    user = live.fund({"USDC": "100", "SOL": "1"})
    ex = ccxt_sync(live.base, user)
    ex.load_markets()
    if case == "symbol":
        with pytest.raises(ccxt.BadSymbol):
            ex.public_get_depth({"symbol": "DOGEUSDC"})
    elif case == "funds":
        with pytest.raises(ccxt.InsufficientFunds):
            ex.create_order(SYMBOL, "limit", "buy", 10, 100)
    elif case == "grid":
        with pytest.raises(ccxt.InvalidOrder):
            ex.private_post_order({"symbol": "SOLUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                   "quantity": "1", "price": "10.005"})
    elif case == "unknown_order":
        with pytest.raises(ccxt.OrderNotFound):
            ex.fetch_order("999999999", SYMBOL)
        with pytest.raises(ccxt.OrderNotFound):
            ex.cancel_order("999999999", SYMBOL)
    elif case == "auth":
        ex.secret = "0" * 64
        with pytest.raises(ccxt.AuthenticationError):
            ex.fetch_balance()
    elif case == "nonce":
        ex.nonce = lambda: ex.milliseconds() - 120_000
        with pytest.raises(ccxt.InvalidNonce):
            ex.fetch_balance()
    elif case == "post_only":
        seller = ccxt_sync(live.base, live.fund({"SOL": "1"}))
        ask = seller.create_order(SYMBOL, "limit", "sell", 0.5, 60)
        with pytest.raises(ccxt.OrderImmediatelyFillable):  # a subclass of InvalidOrder
            ex.create_order(SYMBOL, "limit", "buy", 0.5, 60, {"postOnly": True})
        seller.cancel_order(ask["id"], SYMBOL)


def test_halted_market_is_closed(live: Live) -> None:
    """A halted market (registered without an engine): HALT in exchangeInfo, and an order
    is refused before anything is queued, as ccxt's MarketClosed."""
    halted = MarketSpec.model_validate({**live.stack.markets[0].to_wire(), "symbol": "HLT/USDC", "baseAsset": "HLT",
                                        "state": "halted"})

    async def register() -> None:
        r = aioredis.Redis.from_url(live.redis_url)
        try:
            await register_market(r, halted)
        finally:
            await r.aclose()
    asyncio.run(register())
    ex = ccxt_sync(live.base, live.fund({"USDC": "100"}))
    markets = eventually(lambda: (m := ex.load_markets(reload=True)) and "HLT/USDC" in m and m)
    assert markets["HLT/USDC"]["active"] is False and markets["HLT/USDC"]["info"]["status"] == "HALT"
    with pytest.raises(ccxt.MarketClosed):
        ex.create_order("HLT/USDC", "limit", "buy", 1, 10)


async def test_async_ccxt(live: Live) -> None:
    user = await live.afund({"USDC": "1000"})
    ex = ccxt_async(live.base, user)
    try:
        markets = await ex.load_markets()
        assert markets[SYMBOL]["precision"]["price"] == 0.01
        order = await ex.create_order(SYMBOL, "limit", "buy", 1, 20)
        assert (await ex.fetch_order(order["id"], SYMBOL))["status"] == "open"
        assert [o["id"] for o in await ex.fetch_open_orders(SYMBOL)] == [order["id"]]
        assert (await ex.cancel_order(order["id"], SYMBOL))["status"] == "canceled"
        balance = await ex.fetch_balance()
        assert balance["USDC"]["free"] == 1000
        book = await ex.fetch_order_book(SYMBOL)
        assert "bids" in book
    finally:
        await ex.close()


def test_more_unified_methods(live: Live) -> None:
    """fetch_time, fetch_orders / closed / canceled (allOrders), fetch_order_trades
    (myTrades by orderId), fetch_bids_asks (bookTicker), fetch_last_prices (ticker/price),
    limit IOC and FOK through params."""
    maker = ccxt_sync(live.base, live.fund({"SOL": "5"}))
    taker = ccxt_sync(live.base, live.fund({"USDC": "2000"}))
    assert abs(taker.fetch_time() - taker.milliseconds()) < 5_000
    ask = maker.create_order(SYMBOL, "limit", "sell", 1, 140)
    ioc = taker.create_order(SYMBOL, "limit", "buy", 2, 140, {"timeInForce": "IOC"})
    assert ioc["status"] == "expired" and ioc["filled"] == 1  # the unfilled rest of an IOC expires
    fok = taker.create_order(SYMBOL, "limit", "buy", 1, 140, {"timeInForce": "FOK"})
    assert fok["status"] == "expired" and fok["filled"] == 0
    resting = taker.create_order(SYMBOL, "limit", "buy", 1, 11)
    taker.cancel_order(resting["id"], SYMBOL)
    orders = eventually(lambda: len(o := taker.fetch_orders(SYMBOL)) == 3 and o)
    assert [o["id"] for o in orders] == [ioc["id"], fok["id"], resting["id"]]
    assert [o["id"] for o in taker.fetch_canceled_orders(SYMBOL)] == [resting["id"]]
    assert {o["id"] for o in taker.fetch_closed_orders(SYMBOL)} <= {ioc["id"], fok["id"]}
    trades = eventually(lambda: taker.fetch_order_trades(ioc["id"], SYMBOL))
    assert [(t["order"], t["amount"], t["price"]) for t in trades] == [(ioc["id"], 1.0, 140.0)]
    assert set(taker.fetch_bids_asks([SYMBOL])) == {SYMBOL}
    assert set(taker.fetch_last_prices()) >= {SYMBOL}
    assert maker.fetch_order(ask["id"], SYMBOL)["status"] == "closed"
