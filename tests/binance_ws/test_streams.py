"""Binance market streams on the real stack with raw WebSocket clients (aiohttp): every
stream type's payload after a crossing pair, raw and combined delivery, and the live
SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY protocol with its errors."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from cryptex_client import CryptexClient
from tests.binance_ws.conftest import SYM, Exchange, M, call, cross, funded, recv, until
from tests.binance_ws.test_depth import FLOW_FUNDS, flow

pytestmark = pytest.mark.slow

ALL = [f"{SYM}@{c}" for c in ("trade", "aggTrade", "kline_1m", "miniTicker", "ticker", "bookTicker",
                              "depth5", "depth10@100ms", "depth20", "depth", "depth@100ms")]


def by_stream(msgs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [m["data"] for m in msgs if m.get("stream") == name]


async def collect(ws: aiohttp.ClientWebSocketResponse, sink: list[Any]) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        sink.append(msg.json())


async def test_every_stream_type_after_a_crossing_pair(exchange: Exchange, admin: CryptexClient,
                                                       session: aiohttp.ClientSession) -> None:
    combined = await session.ws_connect(f"{exchange.ws}/stream?streams={'/'.join(ALL)}")
    raw = await session.ws_connect(f"{exchange.ws}/ws/{SYM}@trade")
    msgs: list[dict[str, Any]] = []
    raw_msgs: list[dict[str, Any]] = []
    readers = [asyncio.create_task(collect(combined, msgs)), asyncio.create_task(collect(raw, raw_msgs))]
    await asyncio.sleep(0.2)
    # the sell rests longer than the slowest stream's update time (1 s), then is taken
    seller, buyer = await funded(admin, {"SOL": "10"}), await funded(admin, {"USDC": "1000"})
    sell = (await seller.place_order(side="sell", type="limit", price="101.25", quantity="1.500", market=M)).body
    await asyncio.sleep(1.3)
    buy = (await buyer.place_order(side="buy", type="limit", price="101.25", quantity="1.500", market=M)).body
    trade_id = int(buy["fills"][0]["tradeId"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    wanted = ("trade", "aggTrade", "kline_1m", "miniTicker", "ticker", "bookTicker", "depth5",
              "depth10@100ms", "depth20", "depth", "depth@100ms")
    def removed(name: str) -> bool:  # the level's last change on a diff stream is its removal
        changes = [lvl for d in by_stream(msgs, f"{SYM}@{name}") for lvl in d["a"] if lvl[0] == "101.25"]
        return bool(changes) and changes[-1][1] == "0.00000000"

    while not all(by_stream(msgs, f"{SYM}@{w}") for w in wanted) or not raw_msgs or \
            by_stream(msgs, f"{SYM}@ticker")[-1]["c"] != "101.25" or not (removed("depth") and removed("depth@100ms")):
        assert loop.time() < deadline, {w: len(by_stream(msgs, f"{SYM}@{w}")) for w in wanted}
        await asyncio.sleep(0.1)

    check_trades(msgs, raw_msgs, trade_id)
    check_tickers(msgs)
    check_depth(msgs)
    assert sell["order"]["status"] == "new" and buy["order"]["status"] == "filled"
    for ws in (combined, raw):
        await ws.close()
    for r in readers:
        r.cancel()


def check_trades(msgs: list[dict[str, Any]], raw_msgs: list[dict[str, Any]], trade_id: int) -> None:
    # @trade: one message per trade, Binance fields; the bare socket gets the same payload
    trades = [t for t in by_stream(msgs, f"{SYM}@trade") if t["t"] == trade_id]
    assert len(trades) == 1
    t = trades[0]
    assert t == {"e": "trade", "E": t["E"], "s": "SOLUSDC", "t": trade_id, "p": "101.25", "q": "1.500",
                 "T": t["T"], "m": False, "M": True}
    assert t in raw_msgs and all("stream" not in m for m in raw_msgs)
    agg = [a for a in by_stream(msgs, f"{SYM}@aggTrade") if a["a"] == trade_id]
    assert agg == [{"e": "aggTrade", "E": t["E"], "s": "SOLUSDC", "a": trade_id, "p": "101.25",
                    "q": "1.500", "f": trade_id, "l": trade_id, "T": t["T"], "m": False, "M": True}]
    # @kline_1m: the open candle of the trade's minute, closing at the trade's price
    k = next(m["k"] for m in by_stream(msgs, f"{SYM}@kline_1m")
             if m["k"]["t"] <= t["T"] <= m["k"]["T"] and m["k"]["c"] == "101.25")
    assert k["s"] == "SOLUSDC" and k["i"] == "1m" and k["x"] is False  # the update after the trade
    assert k["T"] - k["t"] == 59_999 and k["n"] >= 1 and Decimal(k["v"]) >= Decimal("1.5")


def check_tickers(msgs: list[dict[str, Any]]) -> None:
    # tickers
    ticker = by_stream(msgs, f"{SYM}@ticker")[-1]
    assert ticker["e"] == "24hrTicker" and ticker["s"] == "SOLUSDC" and ticker["c"] == "101.25"
    assert Decimal(ticker["h"]) >= Decimal("101.25") >= Decimal(ticker["l"])
    assert Decimal(ticker["p"]) == Decimal(ticker["c"]) - Decimal(ticker["o"])
    mini = by_stream(msgs, f"{SYM}@miniTicker")[-1]
    assert mini["e"] == "24hrMiniTicker" and set(mini) == {"e", "E", "s", "c", "o", "h", "l", "v", "q"}
    assert mini["v"] == ticker["v"] and mini["q"] == ticker["q"]
    # @bookTicker: the sell order's level appeared on the ask while it rested
    books = by_stream(msgs, f"{SYM}@bookTicker")
    assert all(set(b) == {"u", "s", "b", "B", "a", "A"} and b["s"] == "SOLUSDC" for b in books)
    assert any((b["a"], b["A"]) == ("101.25", "1.500") for b in books), books


def check_depth(msgs: list[dict[str, Any]]) -> None:
    # diff depth at both speeds: the sell level added, then removed, each message continuing
    # the previous one
    for name in ("depth", "depth@100ms"):
        diffs = by_stream(msgs, f"{SYM}@{name}")
        for prev, nxt in itertools.pairwise(diffs):
            assert nxt["U"] == prev["u"] + 1 and nxt["pu"] == prev["u"]
        levels = [lvl for d in diffs for lvl in d["a"] if lvl[0] == "101.25"]
        assert levels[:1] == [["101.25", "1.500"]] and levels[-1] == ["101.25", "0.00000000"]  # Binance's zero
        assert all(d["e"] == "depthUpdate" and d["s"] == "SOLUSDC" for d in diffs)
    # partial books: at most N levels, ids growing
    for n, name in ((5, "depth5"), (10, "depth10@100ms"), (20, "depth20")):
        books_n = by_stream(msgs, f"{SYM}@{name}")
        assert all(set(b) == {"lastUpdateId", "bids", "asks"} for b in books_n)
        assert all(len(b["bids"]) <= n and len(b["asks"]) <= n for b in books_n)
        ids = [b["lastUpdateId"] for b in books_n]
        assert ids == sorted(set(ids)), ids
        assert any(["101.25", "1.500"] in b["asks"] for b in books_n)


async def test_live_subscribe_unsubscribe_and_list(exchange: Exchange, admin: CryptexClient,
                                                   session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(f"{exchange.ws}/ws/0")  # ccxt.pro's path
    assert await call(ws, "SUBSCRIBE", [f"{SYM}@trade", "SOLUSDC@bookTicker"], 1) == {"result": None, "id": 1}
    assert await call(ws, "LIST_SUBSCRIPTIONS", rid=2) == {
        "result": [f"{SYM}@bookTicker", f"{SYM}@trade"], "id": 2}
    assert await call(ws, "UNSUBSCRIBE", [f"{SYM}@trade"], 3) == {"result": None, "id": 3}
    assert await call(ws, "LIST_SUBSCRIPTIONS", rid=4) == {"result": [f"{SYM}@bookTicker"], "id": 4}
    assert await call(ws, "SUBSCRIBE", [f"{SYM}@aggTrade"], 5) == {"result": None, "id": 5}
    # after UNSUBSCRIBE no trade comes; the aggTrade subscribed after does
    _s, _b, _sell, buy = await cross(admin, "99.50", "0.250")
    trade_id = int(buy["fills"][0]["tradeId"])
    seen: list[dict[str, Any]] = []

    def is_our_agg_trade(m: dict[str, Any]) -> bool:
        seen.append(m)
        return m.get("e") == "aggTrade" and m["a"] == trade_id

    agg = await until(ws, is_our_agg_trade)
    assert agg["p"] == "99.50" and agg["q"] == "0.250"
    assert not [m for m in seen if m.get("e") == "trade"]
    # SET_PROPERTY combined: later messages come wrapped
    assert await call(ws, "GET_PROPERTY", ["combined"], 6) == {"result": False, "id": 6}
    assert await call(ws, "SET_PROPERTY", ["combined", True], 7) == {"result": None, "id": 7}
    assert await call(ws, "GET_PROPERTY", ["combined"], 8) == {"result": True, "id": 8}
    await cross(admin, "99.75", "0.125")
    wrapped = await until(ws, lambda m: m.get("stream") == f"{SYM}@aggTrade")
    assert wrapped["data"]["p"] == "99.75"
    await ws.close()


async def test_bad_requests_get_binance_errors(exchange: Exchange, session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(f"{exchange.ws}/ws")
    bad_symbol = await call(ws, "SUBSCRIBE", ["dogeusdc@trade"], 1)
    assert bad_symbol["id"] == 1 and bad_symbol["error"]["code"] == 2
    assert "dogeusdc" in bad_symbol["error"]["msg"]
    assert (await call(ws, "SUBSCRIBE", [f"{SYM}@depth@250ms"], 2))["error"]["code"] == 2
    assert (await call(ws, "SUBSCRIBE", [f"{SYM}@trade@100ms"], 3))["error"]["code"] == 2
    assert (await call(ws, "SUBSCRIBE", [], 4))["error"]["code"] == 2
    assert (await call(ws, "FROBNICATE", [], 5))["error"]["code"] == 2
    assert (await call(ws, "SET_PROPERTY", ["colour", True], 6))["error"] == {"code": 0, "msg": "Unknown property"}
    assert (await call(ws, "SET_PROPERTY", ["combined", "yes"], 7))["error"]["code"] == 1
    # all or nothing: one bad name and nothing is subscribed
    assert (await call(ws, "SUBSCRIBE", [f"{SYM}@trade", "x@trade"], 8))["error"]["code"] == 2
    assert await call(ws, "LIST_SUBSCRIPTIONS", rid=9) == {"result": [], "id": 9}
    await ws.send_str("{not json")
    assert (await recv(ws))["error"]["code"] == 3
    await ws.send_str('{"method": "LIST_SUBSCRIPTIONS", "id": -4}')
    assert (await recv(ws)) == {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
                                "id": None}
    await ws.close()
    for path in (f"/ws/{SYM}@nope", "/ws/dogeusdc@trade", f"/stream?streams={SYM}@trade/nope@x"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(f"{exchange.ws}{path}")
        assert err.value.status == 400, path


async def test_socket_limits_hold_on_the_facade(exchange: Exchange, session: aiohttp.ClientSession) -> None:
    """The gateway's per-socket limits: an oversized frame (1009), a binary frame (1003),
    a flood of requests (refusals, then 1008)."""
    big = await session.ws_connect(f"{exchange.ws}/ws")
    await big.send_str('{"method": "LIST_SUBSCRIPTIONS", "id": 1, "pad": "' + "x" * 20_000 + '"}')
    assert (await recv(big))["error"]["code"] == 2
    assert (await big.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert big.close_code == 1009
    binary = await session.ws_connect(f"{exchange.ws}/ws/{SYM}@trade")
    await binary.send_bytes(b"\x00\x01")
    assert (await recv(binary))["error"]["code"] == 3
    await binary.receive(timeout=5)
    assert binary.close_code == 1003
    flood = await session.ws_connect(f"{exchange.ws}/stream")
    for i in range(60):
        await flood.send_str(f'{{"method": "LIST_SUBSCRIPTIONS", "id": {i}}}')
    replies = []
    while (msg := await flood.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
        replies.append(msg.json())
    assert flood.close_code == 1008
    assert {"result": [], "id": 0} in replies and any("Too many requests" in r.get("error", {}).get("msg", "")
                                                      for r in replies)
    api = await session.ws_connect(f"{exchange.ws}/ws-api/v3")  # the WebSocket API, same limits
    await api.send_bytes(b"\x00\x01")
    refused = await recv(api)
    assert (refused["status"], refused["error"]["code"]) == (400, -1000)
    await api.receive(timeout=5)
    assert api.close_code == 1003


async def test_all_market_ticker_arrays(exchange: Exchange, admin: CryptexClient,
                                        session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(f"{exchange.ws}/ws/!ticker@arr")
    assert await call(ws, "SUBSCRIBE", ["!miniTicker@arr"], 1) == {"result": None, "id": 1}
    assert await call(ws, "LIST_SUBSCRIPTIONS", rid=2) == {"result": ["!miniTicker@arr", "!ticker@arr"], "id": 2}
    await cross(admin, "95.35", "0.050")

    seen: set[str] = set()  # both arrays come from one native ticker, in either order

    def both_seen(m: Any) -> bool:
        if isinstance(m, list):
            seen.update(t["e"] for t in m if t["s"] == "SOLUSDC" and t["c"] == "95.35")
        return seen == {"24hrTicker", "24hrMiniTicker"}

    await until(ws, both_seen)
    # a new subscriber gets every market's latest ticker at once
    late = await session.ws_connect(f"{exchange.ws}/ws/!miniTicker@arr")
    first = await recv(late)
    assert {t["s"] for t in first} >= {"SOLUSDC"} and all(t["e"] == "24hrMiniTicker" for t in first)
    for s in (ws, late):
        await s.close()


async def test_diff_depth_comes_at_its_update_speed(exchange: Exchange, admin: CryptexClient,
                                                    session: aiohttp.ClientSession) -> None:
    """`@depth` merges a burst of updates into about one message a second, `@depth@100ms`
    into one per 100 ms; both continue the previous message and end at the same book."""
    users = [await funded(admin, FLOW_FUNDS) for _ in range(2)]
    ws = await session.ws_connect(f"{exchange.ws}/stream?streams=btcusdc@depth/btcusdc@depth@100ms")
    msgs: list[dict[str, Any]] = []
    reader = asyncio.create_task(collect(ws, msgs))
    rng, started = random.Random(5), time.monotonic()
    for _ in range(6):  # bursts 250 ms apart
        assert await flow(users, rng, 10) > 5
        await asyncio.sleep(0.25)
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.3)  # the last merged updates are sent
    slow, fast = by_stream(msgs, "btcusdc@depth"), by_stream(msgs, "btcusdc@depth@100ms")
    for diffs in (slow, fast):
        for prev, nxt in itertools.pairwise(diffs):
            assert nxt["U"] == prev["u"] + 1
    assert slow and fast and slow[-1]["u"] == fast[-1]["u"]
    assert len(slow) <= elapsed + 2 and 6 <= len(fast) <= elapsed * 10 + 2 and len(slow) < len(fast), (
        len(slow), len(fast), elapsed)
    await ws.close()
    reader.cancel()
