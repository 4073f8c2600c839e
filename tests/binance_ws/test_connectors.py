"""python-binance's ThreadedWebsocketManager and binance-connector's
SpotWebsocketStreamClient on the facade, one market stream each, with only their URLs
changed: the REST base (python-binance pings it when it starts) and the stream URL."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Any

import pytest
from binance.async_client import AsyncClient
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient
from binance.ws import threaded_stream
from binance.ws.streams import ThreadedWebsocketManager

from cryptex_client import CryptexClient
from tests.binance_ws.conftest import Exchange, cross

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


async def test_python_binance_threaded_trade_socket(exchange: Exchange, admin: CryptexClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    class FacadeClient(AsyncClient):
        API_URL = f"{exchange.api}/api"  # the spot REST base; python-binance pings it at start

    class FacadeManager(ThreadedWebsocketManager):
        async def _before_socket_listener_start(self) -> None:
            await super()._before_socket_listener_start()
            self._bsm.STREAM_URL = f"{exchange.ws}/"  # python-binance appends "ws/<stream>"

    monkeypatch.setattr(threaded_stream, "AsyncClient", FacadeClient)
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    paths: list[str] = []
    ready, done = threading.Event(), threading.Event()

    def manage() -> None:
        """A plain thread, as in python-binance's examples: the manager takes this thread's
        event loop and runs it in its own thread."""
        twm = FacadeManager()
        twm.start()
        try:
            paths.append(twm.start_trade_socket(callback=received.put, symbol="SOLUSDC"))
            ready.set()
            done.wait(30)
        finally:
            twm.stop()
            twm.join(timeout=10)

    thread = threading.Thread(target=manage, daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 10)
        assert paths == ["solusdc@trade"]
        await asyncio.sleep(1.0)  # the manager's thread opens the socket
        _s, _b, _sell, buy = await cross(admin, "97.10", "0.330")
        trade_id = int(buy["fills"][0]["tradeId"])
        msg = await take(received, lambda m: m.get("e") == "trade" and m["t"] == trade_id)
        assert (msg["s"], msg["p"], msg["q"], msg["m"]) == ("SOLUSDC", "97.10", "0.330", False)
    finally:
        done.set()
        await asyncio.to_thread(thread.join, 15)


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
