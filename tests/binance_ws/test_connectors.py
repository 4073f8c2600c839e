"""python-binance's ThreadedWebsocketManager and binance-connector's
SpotWebsocketStreamClient on the facade, one market stream each, and python-binance's user
socket (WebSocket API `userDataStream.subscribe.signature`), with only their URLs changed:
the REST base (python-binance pings it when it starts), the stream URL and the WS API URL."""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
import time
from typing import Any

import aiohttp
import pytest
from binance.async_client import AsyncClient
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient
from binance.ws import threaded_stream
from binance.ws.depthcache import ThreadedDepthCacheManager
from binance.ws.streams import BinanceSocketManager, ThreadedWebsocketManager

from cryptex_client import CryptexClient
from tests.binance_ws.conftest import Exchange, M, cross, funded
from tests.binance_ws.test_depth import FLOW_FUNDS, FLOW_MARKET, flow, rest_depth

pytestmark = pytest.mark.slow


async def take(q: queue.Queue[Any], pred: Any, timeout: float = 10.0) -> Any:
    """The first item of a thread-fed queue for which `pred` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        assert remaining > 0, "no matching message"
        try:
            item = await asyncio.to_thread(q.get, True, min(remaining, 1.0))
        except queue.Empty:
            continue
        if pred(item):
            return item


class Manager:
    """python-binance's ThreadedWebsocketManager with its URLs on the facade, run from a plain
    thread as in python-binance's examples (the manager takes that thread's event loop and
    runs it in its own thread); `start(name, **kw)` calls its `start_<name>` there."""

    def __init__(self, exchange: Exchange, monkeypatch: pytest.MonkeyPatch, key: str = "", secret: str = "") -> None:
        class FacadeClient(AsyncClient):
            API_URL = f"{exchange.api}/api"  # the spot REST base; python-binance pings it at start
            WS_API_URL = f"{exchange.ws}/ws-api/v3"  # user data: userDataStream.subscribe.signature

        class FacadeManager(ThreadedWebsocketManager):
            async def _before_socket_listener_start(self) -> None:
                await super()._before_socket_listener_start()
                self._bsm.STREAM_URL = f"{exchange.ws}/"  # python-binance appends "ws/<stream>"

        monkeypatch.setattr(threaded_stream, "AsyncClient", FacadeClient)
        self.factory = lambda: FacadeManager(api_key=key or None, api_secret=secret or None)
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.paths: list[str] = []
        self.ready, self.done = threading.Event(), threading.Event()
        self.thread: threading.Thread | None = None

    async def start(self, name: str, **kw: Any) -> None:
        def manage() -> None:
            twm = self.factory()
            twm.start()
            try:
                self.paths.append(getattr(twm, f"start_{name}")(callback=self.received.put, **kw))
                self.ready.set()
                self.done.wait(30)
            finally:
                twm.stop()
                twm.join(timeout=10)

        self.thread = threading.Thread(target=manage, daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(self.ready.wait, 10)
        await asyncio.sleep(1.0)  # the manager's thread opens the socket

    async def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 15)


async def test_python_binance_threaded_trade_socket(exchange: Exchange, admin: CryptexClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    twm = Manager(exchange, monkeypatch)
    try:
        await twm.start("trade_socket", symbol="SOLUSDC")
        assert twm.paths == ["solusdc@trade"]
        _s, _b, _sell, buy = await cross(admin, "97.10", "0.330")
        trade_id = int(buy["fills"][0]["tradeId"])
        msg = await take(twm.received, lambda m: m.get("e") == "trade" and m["t"] == trade_id)
        assert (msg["s"], msg["p"], msg["q"], msg["m"]) == ("SOLUSDC", "97.10", "0.330", False)
    finally:
        await twm.stop()


async def test_python_binance_threaded_user_socket(exchange: Exchange, admin: CryptexClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    user = await funded(admin, {"SOL": "3"})
    twm = Manager(exchange, monkeypatch, str(user.api_key), str(user.api_secret))
    try:
        await twm.start("user_socket")
        order = (await user.place_order(side="sell", type="limit", price="450.00", quantity="0.700",
                                        market=M)).body["order"]
        msg = await take(twm.received, lambda m: m.get("e") == "executionReport")
        assert (msg["i"], msg["X"], msg["q"], msg["p"], msg["S"]) == (
            int(order["orderId"]), "NEW", "0.700", "450.00", "SELL")
        await user.cancel_order(order["orderId"])
        msg = await take(twm.received, lambda m: m.get("e") == "executionReport" and m["X"] == "CANCELED")
        assert msg["i"] == int(order["orderId"])
    finally:
        await twm.stop()


async def test_binance_connector_agg_trade_stream(exchange: Exchange, admin: CryptexClient) -> None:
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    client = SpotWebsocketStreamClient(stream_url=exchange.ws,  # the client appends "/ws"
                                       on_message=lambda _ws, raw: received.put(json.loads(raw)))
    try:
        client.agg_trade(symbol="solusdc", id=7)  # a live SUBSCRIBE with its id
        assert await take(received, lambda m: m.get("id") == 7) == {"result": None, "id": 7}
        _s, _b, _sell, buy = await cross(admin, "96.20", "0.440")
        trade_id = int(buy["fills"][0]["tradeId"])
        msg = await take(received, lambda m: m.get("e") == "aggTrade" and m["a"] == trade_id)
        assert (msg["s"], msg["p"], msg["q"], msg["f"], msg["l"]) == ("SOLUSDC", "96.20", "0.440", trade_id, trade_id)
    finally:
        client.stop()


async def rest_depth_async(exchange: Exchange) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        return await rest_depth(s, exchange)


async def test_python_binance_depth_cache_equals_rest_depth(
        exchange: Exchange, admin: CryptexClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """python-binance's own local-book recipe (ThreadedDepthCacheManager: REST get_order_book
    plus `@depth` diffs) ends equal to REST depth under traffic."""
    users = [await funded(admin, FLOW_FUNDS) for _ in range(2)]
    rng = random.Random(41)
    await flow(users, rng, 30)
    Manager(exchange, monkeypatch)  # points python-binance's AsyncClient at the facade
    books: queue.Queue[tuple[list[list[str]], list[list[str]]]] = queue.Queue()
    ready, done = threading.Event(), threading.Event()

    def on_book(cache: Any) -> None:  # python-binance's thread: copy the book as decimal strings
        books.put(([[f"{p:.1f}", f"{q:.5f}"] for p, q in cache.get_bids()],
                   [[f"{p:.1f}", f"{q:.5f}"] for p, q in cache.get_asks()]))

    def manage() -> None:
        dcm = ThreadedDepthCacheManager()
        dcm.start()
        try:
            while dcm._client is None:
                time.sleep(0.01)
            bm = BinanceSocketManager(dcm._client)
            bm.STREAM_URL = f"{exchange.ws}/"
            dcm.start_depth_cache(callback=on_book, symbol=FLOW_MARKET.replace("/", ""), bm=bm, limit=1000)
            ready.set()
            done.wait(60)
        finally:
            dcm.stop()
            dcm.join(timeout=10)

    thread = threading.Thread(target=manage, daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 15)
        await asyncio.sleep(1.0)
        assert await flow(users, rng, 120) > 80
        rest = await rest_depth_async(exchange)
        latest = await take(books, lambda b: b == (rest["bids"], rest["asks"]), timeout=15)
        assert latest[0] or latest[1]
    finally:
        done.set()
        await asyncio.to_thread(thread.join, 20)
