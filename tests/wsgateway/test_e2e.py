"""End to end with real processes: API, engines, gateway (the launcher's Stack) on a real Redis.

A random order flow goes through the REST API; WebSocket clients watch it:
- a book client rebuilds SOL/USDC from the depth snapshot plus diffs, checks the update ids
  continue and the checksum matches after every message, and ends equal to REST /depth (the
  engine's book);
- the trades stream equals the trades in the order replies; the ticker agrees with them;
- each user's private streams show only their own orders and fills;
- a client that never reads is dropped while the others receive everything.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys
from cryptex_wsgateway.book import checksum
from tests.e2e.conftest import ADMIN, make_stack, register_all
from tests.support.eventually import eventually
from tests.support.servers import redis_server
from tests.wsgateway.conftest import auth_params, client_frame, raw_ws_connect

pytestmark = pytest.mark.slow
M = "SOL/USDC"


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    with redis_server() as srv:
        st = make_stack(srv.url, with_wsgateway=True, extra_env={
            "CRYPTEX_HISTORY_ENABLED": "false",
            "CRYPTEX_MAX_BUFFER_BYTES": "16384",
            "CRYPTEX_MAX_QUEUE_MESSAGES": "200",
        })
        asyncio.run(register_all(srv.url, st))
        st.start_all()
        yield st, srv
        codes = st.stop_all()
        shutil.rmtree(st.state_dir, ignore_errors=True)
        assert codes.get("wsgateway") == 0, st.log_text("wsgateway")[-3000:]


class BookClient:
    """Rebuilds the book from depth messages by the documented client rule."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.last_u: int | None = None
        self.checked = 0

    def sorted_levels(self) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda x: -Decimal(x[0]))
        asks = sorted(self.asks.items(), key=lambda x: Decimal(x[0]))
        return [list(b) for b in bids], [list(a) for a in asks]

    def on_message(self, data: dict[str, Any]) -> None:
        if data["e"] == "depthSnapshot":
            self.bids = {p: q for p, q in data["bids"]}
            self.asks = {p: q for p, q in data["asks"]}
            self.last_u = data["lastUpdateId"]
        else:
            assert self.last_u is not None, "an update before the snapshot"
            assert data["U"] == self.last_u + 1, (data["U"], self.last_u)
            for side, book in (("bids", self.bids), ("asks", self.asks)):
                for p, q in data[side]:
                    if Decimal(q) == 0:
                        book.pop(p, None)
                    else:
                        book[p] = q
            self.last_u = data["u"]
        assert data["c"] == checksum(*self.sorted_levels())
        self.checked += 1


async def collect(ws: aiohttp.ClientWebSocketResponse, sink: list[dict[str, Any]]) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        sink.append(orjson.loads(msg.data))


async def wait_acks(sink: list[dict[str, Any]]) -> None:
    """Until the AUTH (id 1) and SUBSCRIBE (id 2) replies are in `sink` (a reader fills it)."""
    deadline = time.monotonic() + 5
    while {m.get("id") for m in sink if "result" in m} != {1, 2}:
        assert time.monotonic() < deadline, sink
        await asyncio.sleep(0.01)


async def test_book_trades_ticker_and_private_streams_match_the_engine(stack: Any) -> None:
    st, _srv = stack
    api = f"http://127.0.0.1:{st.api_port}"
    ws_url = f"ws://127.0.0.1:{st.ws_port}/ws"
    rng = random.Random(7)
    async with CryptexClient(api, admin_token=ADMIN) as admin, aiohttp.ClientSession() as s:
        prefix = uuid.uuid4().hex[:8]
        users = [await admin.new_funded_user({"SOL": "1000", "USDC": "200000"}, prefix + str(i))
                 for i in range(2)]
        # Sockets: a book watcher, one private socket per user, one client that never reads.
        book_ws = await s.ws_connect(ws_url)
        await book_ws.send_json({"method": "SUBSCRIBE", "id": 1, "params": [
            "depth@SOL/USDC", "trades.SOL_USDC", "ticker@sol/usdc"]})
        private = []
        for u in users:
            ws = await s.ws_connect(ws_url)
            await ws.send_json({"method": "AUTH", "id": 1,
                                "params": auth_params(u.api_key, u.api_secret)})
            await ws.send_json({"method": "SUBSCRIBE", "id": 2,
                                "params": ["user.orders", "user.fills"]})
            private.append(ws)
        slow = await asyncio.to_thread(raw_ws_connect, st.ws_port, 2048)
        slow.sendall(client_frame(orjson.dumps({"method": "SUBSCRIBE", "id": 1, "params": [
            "depth@SOL/USDC", "trades@SOL/USDC", "bookTicker@SOL/USDC",
            *[f"kline_{i}@SOL/USDC" for i in ("1m", "5m", "15m", "1h", "4h", "1d")]]})))
        book_msgs: list[dict[str, Any]] = []
        priv_msgs: list[list[dict[str, Any]]] = [[], []]
        readers = [asyncio.create_task(collect(book_ws, book_msgs))] + [
            asyncio.create_task(collect(ws, sink)) for ws, sink in zip(private, priv_msgs, strict=True)
        ]
        for sink in priv_msgs:  # once acknowledged, every later private event arrives (issue 11 defect 7)
            await wait_acks(sink)

        placed, reply_trades = await random_order_flow(users, rng)
        assert len(reply_trades) > 20
        await assert_book_rebuilt_from_the_stream(admin, book_msgs)
        await assert_trades_and_ticker(book_msgs, reply_trades)
        await asyncio.sleep(1.0)
        assert_private_streams(priv_msgs, placed)

        # The client that never reads is dropped while the book client gets everything. The
        # order flow above is too small to fill a socket's buffers, so bulk messages are
        # published on the engine's trades channel (after the trade checks).
        redis = aioredis.Redis.from_url(_srv.url)
        before = len(book_msgs)
        for seq in range(200):
            await redis.publish(keys.trades_channel(M), orjson.dumps(
                [{"tradeId": f"bulk{seq}", "market": M, "price": "1.00", "quantity": "1.000",
                  "quoteQuantity": "1.00000", "takerSide": "buy", "ts": int(time.time() * 1000),
                  "seq": seq, "pad": "x" * 20_000}]))
        await redis.aclose()
        deadline = time.monotonic() + 20
        while sum(1 for m in book_msgs[before:] if m.get("stream") == "trades@SOL/USDC") < 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        bulk = [t["tradeId"] for m in book_msgs[before:] if m.get("stream") == "trades@SOL/USDC"
                for t in m["data"]]
        assert bulk == [f"bulk{i}" for i in range(200)]
        assert not book_ws.closed and all(not ws.closed for ws in private)
        await asyncio.sleep(2.5)  # the gateway gives a slow client 2 s to take its close frame
        ops_port = st.services["wsgateway"].ops_port  # /metrics: the ops port only
        metrics = await (await s.get(f"http://127.0.0.1:{ops_port}/metrics")).text()
        dropped = [line for line in metrics.splitlines()
                   if line.startswith("cryptex_ws_slow_clients_dropped_total")]
        assert dropped and float(dropped[0].split()[-1]) >= 1, dropped
        slow.close()
        for ws in [book_ws, *private]:
            await ws.close()
        for t in readers:
            t.cancel()


async def random_order_flow(users: list[CryptexClient], rng: random.Random
                            ) -> tuple[list[set[str]], dict[str, tuple[str, str]]]:
    """250 random limit, market and cancel requests by two users: the order ids each user
    placed, and every trade of the replies (id -> (price, quantity))."""
    placed: list[set[str]] = [set(), set()]
    open_orders: list[tuple[int, str]] = []
    reply_trades: dict[str, tuple[str, str]] = {}
    for _ in range(250):
        who = rng.randrange(2)
        client = users[who]
        roll = rng.random()
        if roll < 0.15 and open_orders:
            owner, oid = open_orders.pop(rng.randrange(len(open_orders)))
            await users[owner].cancel_order(oid)
            continue
        side = rng.choice(["buy", "sell"])
        qty = f"{rng.randint(1, 3000) / 1000:.3f}"
        if roll < 0.25:
            r = await client.place_order(side=side, type="market", quantity=qty, market=M)
        else:
            price = f"{100 + rng.randint(-40, 40) / 20:.2f}"
            r = await client.place_order(side=side, type="limit", price=price, quantity=qty, market=M)
        if r.status != 200:
            continue
        order = r.body["order"]
        placed[who].add(order["orderId"])
        if order["status"] in ("new", "partially_filled"):
            open_orders.append((who, order["orderId"]))
        for f in r.body.get("fills", []):
            reply_trades[f["tradeId"]] = (f["price"], f["quantity"])
    return placed, reply_trades


async def assert_book_rebuilt_from_the_stream(admin: CryptexClient, book_msgs: list[dict[str, Any]]) -> None:
    """The book rebuilt from the depth stream (checksums verified) ends equal to REST /depth."""
    rebuilt = BookClient()
    done = 0

    async def equal_to_rest() -> bool:
        nonlocal done
        rest = (await admin.depth(M, limit=200)).body
        for msg in book_msgs[done:]:
            if msg.get("stream") == "depth@SOL/USDC":
                rebuilt.on_message(msg["data"])
        done = len(book_msgs)
        return bool(rebuilt.last_u is not None and rebuilt.last_u >= rest["lastUpdateId"]
                    and rebuilt.sorted_levels() == (rest["bids"], rest["asks"]))

    await eventually(equal_to_rest, 10, interval_s=0.1, what="the streamed book equal to REST /depth")
    assert rebuilt.checked > 50


async def assert_trades_and_ticker(book_msgs: list[dict[str, Any]], reply_trades: dict[str, tuple[str, str]]) -> None:
    """The trades stream holds exactly the replies' trades; the last ticker agrees with them."""
    def streamed() -> dict[str, tuple[str, str]]:
        return {t["tradeId"]: (t["price"], t["quantity"]) for m in book_msgs
                if m.get("stream") == "trades@SOL/USDC" for t in m["data"]}

    def tickers() -> list[dict[str, Any]]:
        return [m["data"] for m in book_msgs if m.get("stream") == "ticker@SOL/USDC"]

    await eventually(lambda: len(streamed()) >= len(reply_trades) and tickers()
                     and tickers()[-1]["count"] == len(reply_trades), 10, interval_s=0.2,
                     what="every trade streamed and counted by the ticker")
    assert streamed() == reply_trades
    ticker = tickers()[-1]
    prices = [Decimal(p) for p, _ in reply_trades.values()]
    last_id = max(reply_trades, key=int)
    assert Decimal(ticker["volume"]) == sum(Decimal(q) for _, q in reply_trades.values())
    assert Decimal(ticker["high"]) == max(prices) and Decimal(ticker["low"]) == min(prices)
    assert ticker["last"] == reply_trades[last_id][0]


def assert_private_streams(priv_msgs: list[list[dict[str, Any]]], placed: list[set[str]]) -> None:
    """Each user's private streams: only their own orders and fills, and all their orders."""
    for who in (0, 1):
        orders = {m["data"]["orderId"] for m in priv_msgs[who] if m.get("stream") == "user.orders"}
        fills = {m["data"]["orderId"] for m in priv_msgs[who] if m.get("stream") == "user.fills"}
        assert orders and orders <= placed[who], (who, orders - placed[who])
        assert orders == placed[who]
        assert fills <= placed[who]
