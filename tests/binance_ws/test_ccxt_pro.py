"""ccxt.pro's unchanged binance class against the facade: REST on /api/v3 (load_markets,
the order book snapshot, orders) and WebSocket on the gateway's /binance, with only its
URLs replaced. watch_order_book stays equal to REST depth across updates; watch_trades,
watch_ticker; watch_orders and watch_my_trades (user data through the WebSocket API's
userDataStream.subscribe.signature)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest

from cryptex_client import CryptexClient
from tests.binance_ws.conftest import Exchange, M, cross, funded
from tests.binance_ws.test_depth import FLOW_FUNDS, FLOW_MARKET, flow, paced_flow, rest_depth
from tests.support.eventually import eventually

pytestmark = pytest.mark.slow
SYMBOL = "SOL/USDC"  # ccxt's unified symbol is Cryptex's
OPTIONS = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}


def pro_binance(ex: Exchange, user: CryptexClient | None = None) -> Any:
    """ccxt.pro.binance with its whole urls['api'] replaced: spot REST and WebSocket to the
    facade, every other API family to a path it does not serve (nothing at binance.com)."""
    creds = {"apiKey": str(user.api_key), "secret": str(user.api_secret)} if user else {}
    exchange = ccxtpro.binance({**creds, "options": dict(OPTIONS), "enableRateLimit": False})
    api = exchange.urls["api"]
    rest = {k: f"{ex.api}/api/v3" if k in ("public", "private") else f"{ex.api}/unsupported/{k}"
            for k in api if k != "ws"}
    ws: dict[str, Any] = {k: f"{ex.ws}/ws" if k == "spot" else f"{ex.ws}/unsupported/{k}"
                          for k in api["ws"] if k != "ws-api"}
    ws["ws-api"] = {k: f"{ex.ws}/ws-api/v3" if k == "spot" else f"{ex.ws}/unsupported/{k}"
                    for k in api["ws"]["ws-api"]}
    exchange.urls["api"] = {**rest, "ws": ws}
    assert "binance.com" not in repr(exchange.urls["api"])
    return exchange


@pytest.fixture
async def pro(exchange: Exchange) -> AsyncIterator[Any]:
    ex = pro_binance(exchange)
    yield ex
    await ex.close()


def as_floats(levels: list[list[str]]) -> list[list[float]]:
    return [[float(p), float(q)] for p, q in levels]


async def until_equal_to_rest(pro: Any, session: aiohttp.ClientSession, exchange: Exchange) -> dict[str, Any]:
    """Once the flow pauses, the last update ccxt applied is REST's book: same id, same levels."""
    deadline = time.monotonic() + 10
    while True:
        rest = await rest_depth(session, exchange)
        book = pro.orderbooks[FLOW_MARKET]  # kept up to date by ccxt's handler
        if book["nonce"] == rest["lastUpdateId"]:
            break
        assert time.monotonic() < deadline, (book["nonce"], rest["lastUpdateId"])
        await asyncio.sleep(0.1)
    assert book["bids"] == as_floats(rest["bids"]) and book["asks"] == as_floats(rest["asks"])
    return rest


async def test_watch_order_book_stays_equal_to_rest_depth(
        exchange: Exchange, admin: CryptexClient, session: aiohttp.ClientSession, pro: Any) -> None:
    users = [await funded(admin, FLOW_FUNDS) for _ in range(2)]
    rng = random.Random(29)
    await flow(users, rng, 40)
    await pro.watch_order_book(FLOW_MARKET)
    ids, levels = [], 0
    for _ in range(4):  # rounds of traffic, each followed by a comparison with REST
        assert await paced_flow(users, rng, bursts=4, per_burst=10) > 25
        rest = await until_equal_to_rest(pro, session, exchange)
        ids.append(rest["lastUpdateId"])
        levels += len(rest["bids"]) + len(rest["asks"])
    assert ids == sorted(set(ids)) and levels > 8, (ids, levels)


async def test_watch_trades_and_ticker(exchange: Exchange, admin: CryptexClient, pro: Any) -> None:
    await pro.load_markets()
    watch = asyncio.create_task(pro.watch_trades(SYMBOL))
    await asyncio.sleep(0.5)  # the SUBSCRIBE is acknowledged before the trade happens
    _s, _b, _sell, buy = await cross(admin, "98.40", "0.750")
    trade_id = buy["fills"][0]["tradeId"]
    await asyncio.wait_for(watch, 10)
    t = await eventually(lambda: next((t for t in pro.trades[SYMBOL] if t["id"] == trade_id), None))
    assert (t["symbol"], t["price"], t["amount"], t["side"]) == (SYMBOL, 98.40, 0.75, "buy")
    await asyncio.wait_for(pro.watch_ticker(SYMBOL), 10)
    ticker = await eventually(lambda: pro.tickers[SYMBOL] if pro.tickers[SYMBOL]["last"] == 98.40 else None)
    assert ticker["symbol"] == SYMBOL and ticker["high"] >= 98.40 >= ticker["low"]
    assert ticker["baseVolume"] > 0 and ticker["timestamp"] > 0
    await asyncio.wait_for(pro.un_watch_trades(SYMBOL), 10)  # UNSUBSCRIBE, acknowledged
    await asyncio.wait_for(pro.un_watch_ticker(SYMBOL), 10)


async def test_watch_orders_and_my_trades(exchange: Exchange, admin: CryptexClient) -> None:
    seller = await funded(admin, {"SOL": "10"})
    buyer = await funded(admin, {"USDC": "1000"})
    sell_pro, buy_pro = pro_binance(exchange, seller), pro_binance(exchange, buyer)
    try:
        await asyncio.gather(sell_pro.load_markets(), buy_pro.load_markets())
        sell_orders = asyncio.create_task(sell_pro.watch_orders(SYMBOL))
        buy_trades = asyncio.create_task(buy_pro.watch_my_trades(SYMBOL))
        await asyncio.sleep(1.0)  # both subscriptions acknowledged
        sell = await sell_pro.create_order(SYMBOL, "limit", "sell", 1.0, 100.0)
        orders = await asyncio.wait_for(sell_orders, 10)
        assert (orders[-1]["id"], orders[-1]["status"], orders[-1]["amount"]) == (sell["id"], "open", 1.0)
        buy = await buy_pro.create_order(SYMBOL, "limit", "buy", 1.0, 100.0)
        trades = await asyncio.wait_for(buy_trades, 10)
        t = trades[-1]
        assert (t["order"], t["price"], t["amount"], t["side"], t["takerOrMaker"]) == (
            buy["id"], 100.0, 1.0, "buy", "taker")
        assert t["fee"] == {"cost": 0.002, "currency": "SOL"}
        done = await eventually(lambda: next(
            (o for o in sell_pro.orders if o["id"] == sell["id"] and o["status"] == "closed"), None))
        assert (done["id"], done["filled"], done["remaining"], done["cost"]) == (sell["id"], 1.0, 0.0, 100.0)
    finally:
        await sell_pro.close()
        await buy_pro.close()
    assert M == SYMBOL


async def test_watch_ohlcv_bids_asks_and_tickers(exchange: Exchange, admin: CryptexClient, pro: Any) -> None:
    await pro.load_markets()
    candles = asyncio.create_task(pro.watch_ohlcv(SYMBOL, "1m"))
    quotes = asyncio.create_task(pro.watch_bids_asks([SYMBOL]))
    await asyncio.sleep(0.5)
    _s, _b, _sell, buy = await cross(admin, "97.60", "0.200")
    trade_ts = buy["fills"][0]["ts"]
    await asyncio.wait_for(candles, 10)
    candle = await eventually(lambda: next((k for k in pro.ohlcvs[SYMBOL]["1m"] if k[4] == 97.60), None))
    t, _o, h, low, c, v = candle
    assert t == trade_ts - trade_ts % 60_000 and h >= 97.60 >= low and c == 97.60 and v >= 0.2
    bid_ask = (await asyncio.wait_for(quotes, 10))[SYMBOL]
    assert bid_ask["symbol"] == SYMBOL and {"bid", "ask", "bidVolume", "askVolume"} <= set(bid_ask)
    tickers = await asyncio.wait_for(pro.watch_tickers([SYMBOL]), 10)
    assert tickers[SYMBOL]["last"] is not None and tickers[SYMBOL]["symbol"] == SYMBOL
    every = await asyncio.wait_for(pro.watch_tickers(), 10)  # !miniTicker@arr: every market's latest
    assert SYMBOL in every and set(every) <= set(pro.markets)
    await eventually(lambda: pro.tickers[SYMBOL]["last"] == 97.60 or None)


async def test_watch_balance_follows_deposits_and_orders(exchange: Exchange, admin: CryptexClient) -> None:
    user = await funded(admin, {"USDC": "100"})
    ex = pro_binance(exchange, user)
    try:
        await ex.load_markets()
        watch = asyncio.create_task(ex.watch_balance())
        await asyncio.sleep(1.0)  # subscribed
        uid = user.user_id  # type: ignore[attr-defined]
        assert (await admin.deposit(uid, "USDC", "50", f"wb-{uid}")).status == 200
        await asyncio.wait_for(watch, 10)
        await eventually(lambda: ex.balance["spot"].get("USDC", {}).get("free") == 150.0 or None)
        await ex.create_order(SYMBOL, "limit", "buy", 0.5, 10.0)
        await eventually(lambda: ex.balance["spot"]["USDC"]["used"] == 5.0 or None)
        usdc = ex.balance["spot"]["USDC"]
        assert (usdc["free"], usdc["used"], usdc["total"]) == (145.0, 5.0, 150.0)
    finally:
        await ex.close()
