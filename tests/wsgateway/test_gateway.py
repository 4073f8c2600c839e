"""The gateway against real Redis: protocol, bad input, fan-out, depth sync, private streams,
slow consumers, shutdown. The engine's side is played by publishing to its channels."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from cryptex_common import keys
from cryptex_common.runtime import start_ops_server
from cryptex_wsgateway.book import checksum
from tests.support.depth_book import store_book
from tests.support.eventually import eventually
from tests.wsgateway.conftest import (
    GatewayUnderTest,
    auth_params,
    client_frame,
    create_user,
    raw_ws_connect,
    recv,
    request,
    subscribe,
)

M = "SOL/USDC"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def ping_ok(ws: aiohttp.ClientWebSocketResponse) -> None:
    assert await request(ws, "PING", rid=99) == {"id": 99, "result": "pong"}


async def test_ops_routes(gw: GatewayUnderTest, session: aiohttp.ClientSession) -> None:
    """Probes on the public port; /metrics only on the ops server (as `__main__` runs it)."""
    for path in ("/healthz", "/readyz"):
        async with session.get(gw.server.make_url(path)) as resp:
            assert resp.status == 200
    async with session.get(gw.server.make_url("/metrics")) as resp:
        assert resp.status == 404
    ops = await start_ops_server("127.0.0.1", 0, gw.gateway.is_ready)
    try:
        ops_port = ops.addresses[0][1]
        async with session.get(f"http://127.0.0.1:{ops_port}/metrics") as resp:
            assert resp.status == 200
            assert "cryptex_ws_connections" in await resp.text()
    finally:
        await ops.cleanup()


async def test_bad_input_gets_error_replies_and_socket_carries_on(
    gw: GatewayUnderTest, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(gw.ws_url) as ws:
        await ws.send_str("this is not json")
        assert (await recv(ws))["error"]["code"] == "INVALID_JSON"
        reply = await request(ws, "DANCE", rid=2)
        assert reply["id"] == 2 and reply["error"]["code"] == "UNKNOWN_METHOD"
        reply = await request(ws, "SUBSCRIBE", ["candles@SOL/USDC"], rid=3)
        assert reply["id"] == 3 and reply["error"]["code"] == "UNKNOWN_STREAM"
        reply = await request(ws, "SUBSCRIBE", ["depth@DOGE/USDC"], rid=4)
        assert reply["id"] == 4 and reply["error"]["code"] == "UNKNOWN_MARKET"
        reply = await request(ws, "SUBSCRIBE", ["user.orders"], rid=5)
        assert reply["id"] == 5 and reply["error"]["code"] == "UNAUTHORIZED"
        many = [f"kline_{i}@SOL/USDC" for i in ("1m", "5m", "15m", "1h", "4h", "1d")]
        reply = await request(ws, "SUBSCRIBE", many, rid=6)  # limit is 5
        assert reply["id"] == 6 and reply["error"]["code"] == "TOO_MANY_STREAMS"
        assert await request(ws, "LIST_SUBSCRIPTIONS", rid=7) == {"id": 7, "result": []}
        await subscribe(ws, "trades@SOL/USDC", "TRADES.sol_usdc", "Depth@sol_usdc", rid=8)
        assert len((await recv(ws))["data"]["bids"]) == 0  # the depth snapshot
        assert await request(ws, "LIST_SUBSCRIPTIONS", rid=9) == {
            "id": 9, "result": ["depth@SOL/USDC", "trades@SOL/USDC"]}
        await ping_ok(ws)


async def test_flood_is_refused_then_closed(
    gw: GatewayUnderTest, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(gw.ws_url) as bystander, session.ws_connect(gw.ws_url) as ws:
        for i in range(60):
            await ws.send_str(orjson.dumps({"method": "PING", "id": i}).decode())
        codes = []
        while True:
            msg = await ws.receive(timeout=3)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            body = orjson.loads(msg.data)
            codes.append(body.get("error", {}).get("code", "ok"))
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008 and "rate limit" in msg.extra
        assert codes.count("ok") == 30 and codes.count("RATE_LIMITED") == 4
        await ping_ok(bystander)


async def test_oversized_frame_is_closed_with_reason(
    gw: GatewayUnderTest, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(gw.ws_url) as bystander, session.ws_connect(gw.ws_url) as ws:
        await ws.send_str('{"method":"PING","id":1,"pad":"' + "x" * 5000 + '"}')
        assert (await recv(ws))["error"]["code"] == "FRAME_TOO_BIG"
        msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1009
        assert "frame over 2048 bytes" in msg.extra
        await ping_ok(bystander)


async def test_auth_errors_and_success(
    gw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A failed AUTH closes the socket (1008): each case on its own socket (more in
    test_hostile.py)."""
    key, secret = await create_user(redis_client, "7")
    for params, code in [
        ({**auth_params(key, secret), "signature": "00" * 32}, "BAD_SIGNATURE"),
        (auth_params(key, "not-the-secret"), "BAD_SIGNATURE"),
        (auth_params(key, secret, ts=int(time.time() * 1000) - 60_000), "STALE_TIMESTAMP"),
        (auth_params("nobody", secret), "UNAUTHORIZED"),
        ({"apiKey": key}, "BAD_REQUEST"),
    ]:
        async with session.ws_connect(gw.ws_url) as ws:
            assert (await request(ws, "AUTH", params, 1))["error"]["code"] == code
            assert (await ws.receive(timeout=3)).type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1008
    async with session.ws_connect(gw.ws_url) as ws:
        good = auth_params(key, secret)
        assert await request(ws, "AUTH", good, 6) == {"id": 6, "result": {"userId": "7"}}
    async with session.ws_connect(gw.ws_url) as ws2:
        reply = await request(ws2, "AUTH", good, 7)  # the same signature again
        assert reply["error"]["code"] == "REPLAYED_REQUEST"
        assert (await ws2.receive(timeout=3)).type == aiohttp.WSMsgType.CLOSE
    async with session.ws_connect(gw.ws_url) as ws3:
        assert (await request(ws3, "SUBSCRIBE", ["user.fills"], 8))["error"]["code"] == "UNAUTHORIZED"


async def test_depth_snapshot_then_diffs_with_checksums(
    make_gateway: Any, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    await store_book(redis_client, M, 10, [["100.00", "1.000"]], [["101.00", "2.000"]])
    gw = await make_gateway()
    async with session.ws_connect(gw.ws_url) as ws:
        await subscribe(ws, "depth@SOL/USDC")
        snap = await recv(ws)
        assert snap["stream"] == "depth@SOL/USDC"
        data = snap["data"]
        assert (data["e"], data["reason"], data["lastUpdateId"]) == ("depthSnapshot", "subscribe", 10)
        book = {"bids": {p: q for p, q in data["bids"]}, "asks": {p: q for p, q in data["asks"]}}
        assert data["c"] == checksum(data["bids"], data["asks"])
        diffs = [
            {"U": 11, "u": 12, "bids": [["100.50", "3.000"]], "asks": []},
            {"U": 13, "u": 13, "bids": [], "asks": []},  # no change: not forwarded
            {"U": 14, "u": 14, "bids": [["100.00", "0.000"]], "asks": [["100.90", "1.000"]]},
        ]
        for d in diffs:
            await redis_client.publish(keys.depth_channel(M), orjson.dumps(
                {"market": M, "pu": d["U"] - 1, "ts": int(time.time() * 1000), **d}))
        last_u = 10
        for _ in range(2):
            upd = (await recv(ws))["data"]
            assert upd["e"] == "depthUpdate" and upd["U"] == last_u + 1
            last_u = upd["u"]
            for side in ("bids", "asks"):
                for p, q in upd[side]:
                    if float(q) == 0:
                        book[side].pop(p, None)
                    else:
                        book[side][p] = q
            bids = sorted(book["bids"].items(), key=lambda x: -float(x[0]))
            asks = sorted(book["asks"].items(), key=lambda x: float(x[0]))
            assert upd["c"] == checksum([list(b) for b in bids], [list(a) for a in asks])
        assert last_u == 14
        assert book == {"bids": {"100.50": "3.000"}, "asks": {"100.90": "1.000", "101.00": "2.000"}}


async def test_gap_triggers_resnapshot(
    gw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    async def publish(first: int, last: int, bids: list) -> None:
        await redis_client.publish(keys.depth_channel(M), orjson.dumps(
            {"market": M, "U": first, "u": last, "pu": first - 1, "bids": bids, "asks": [],
             "ts": 1}))

    before = metric("cryptex_ws_resnapshots_total", market=M)
    async with session.ws_connect(gw.ws_url) as ws:
        await subscribe(ws, "depth@SOL/USDC")
        assert (await recv(ws))["data"]["lastUpdateId"] == 0
        await publish(1, 1, [["10.00", "1.000"]])
        assert (await recv(ws))["data"]["u"] == 1
        # 2..3 are lost on the way; the engine's key already has them.
        await store_book(redis_client, M, 3, [["10.00", "2.000"], ["9.00", "1.000"]], [])
        await publish(4, 4, [["11.00", "1.000"]])
        snap = (await recv(ws))["data"]
        assert (snap["e"], snap["reason"], snap["lastUpdateId"]) == ("depthSnapshot", "resync", 3)
        upd = (await recv(ws))["data"]
        assert (upd["e"], upd["U"], upd["u"]) == ("depthUpdate", 4, 4)
        assert upd["c"] == checksum([["11.00", "1.000"], ["10.00", "2.000"], ["9.00", "1.000"]], [])
        assert metric("cryptex_ws_resnapshots_total", market=M) == before + 1
        # A gap whose lost batches changed nothing: the key stays at 3; after the wait the
        # gateway adopts it as of update 6 and carries on.
        await publish(7, 7, [["12.00", "1.000"]])
        snap = (await recv(ws))["data"]
        assert (snap["reason"], snap["lastUpdateId"]) == ("resync", 6)
        assert (await recv(ws))["data"]["U"] == 7


async def test_fanout_one_redis_subscription_per_process(
    make_gateway: Any, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    g1, g2 = await make_gateway(), await make_gateway()
    sockets = [await session.ws_connect(g.ws_url) for g in (g1, g1, g1, g2, g2)]
    for ws in sockets:
        await subscribe(ws, "trades@SOL/USDC")
    [(_, subscribers)] = await redis_client.pubsub_numsub(keys.trades_channel(M))
    assert subscribers == 2  # one per gateway process, not one per socket
    trades = [{"tradeId": "1", "market": M, "price": "10.00", "quantity": "1.000",
               "quoteQuantity": "10.00000", "takerSide": "buy", "ts": 1, "seq": 5}]
    await redis_client.publish(keys.trades_channel(M), orjson.dumps(trades))
    for ws in sockets:
        assert await recv(ws) == {"stream": "trades@SOL/USDC", "data": trades}
        await ws.close()


async def test_slow_client_dropped_while_fast_one_gets_everything(
    gw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    dropped = metric("cryptex_ws_slow_clients_dropped_total")
    slow = await asyncio.to_thread(raw_ws_connect, gw.port)
    slow.sendall(client_frame(b'{"method":"SUBSCRIBE","params":["trades@SOL/USDC"],"id":1}'))
    async with session.ws_connect(gw.ws_url, max_msg_size=0) as fast:
        await subscribe(fast, "trades@SOL/USDC")
        await eventually(lambda: len(gw.gateway.subs.subscribers("trades@SOL/USDC")) == 2, 5, interval_s=0.01)
        count, pad = 300, "x" * 30_000
        received: list[int] = []

        async def read_all() -> None:
            while len(received) < count:
                received.append((await recv(fast, timeout=10))["data"][0]["seq"])

        reader = asyncio.create_task(read_all())
        for seq in range(count):
            await redis_client.publish(keys.trades_channel(M), orjson.dumps([{
                "tradeId": str(seq), "market": M, "price": "10.00", "quantity": "1.000",
                "quoteQuantity": "10.00000", "takerSide": "buy", "ts": 1, "seq": seq,
                "pad": pad}]))
        await asyncio.wait_for(reader, 30)
        assert received == list(range(count))
        await eventually(lambda: metric("cryptex_ws_slow_clients_dropped_total") == dropped + 1, 5, interval_s=0.01)
        await eventually(lambda: len(gw.gateway.conns) == 1, 5, interval_s=0.01)
        await ping_ok(fast)
    slow.close()


async def test_private_streams_show_only_the_owner(
    gw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    ka, sa = await create_user(redis_client, "1")
    kb, sb = await create_user(redis_client, "2")
    await redis_client.hset(keys.balance_key("1"), mapping={
        "SOL:available": 1_500_000_000, "SOL:locked": 0,
        "USDC:available": 100_000_000, "USDC:locked": 2_500_000})
    async with session.ws_connect(gw.ws_url) as a, session.ws_connect(gw.ws_url) as b:
        assert (await request(a, "AUTH", auth_params(ka, sa)))["result"] == {"userId": "1"}
        assert (await request(b, "AUTH", auth_params(kb, sb)))["result"] == {"userId": "2"}
        await subscribe(a, "user.orders", "user.fills")
        await subscribe(b, "user.orders")
        await subscribe(a, "user.balances", rid=2)
        initial = sorted([(await recv(a))["data"]["asset"] for _ in range(2)])
        assert initial == ["SOL", "USDC"]
        order_b = {"orderId": "9", "status": "new", "market": M}
        order_a = {"orderId": "8", "status": "filled", "market": M}
        fill_a = {"tradeId": "3", "orderId": "8", "market": M, "price": "10.00"}
        await redis_client.publish(keys.user_channel("2"), orjson.dumps({"type": "order", "data": order_b}))
        await redis_client.publish(keys.user_channel("2"), orjson.dumps({"type": "fill", "data": fill_a}))
        await redis_client.publish(keys.user_channel("1"), orjson.dumps({"type": "order", "data": order_a}))
        await redis_client.publish(keys.user_channel("1"), orjson.dumps({"type": "fill", "data": fill_a}))
        await redis_client.publish(keys.user_channel("1"), orjson.dumps(
            {"type": "balance", "data": {"assets": ["USDC"]}}))
        assert await recv(a) == {"stream": "user.orders", "data": order_a}
        assert await recv(a) == {"stream": "user.fills", "data": fill_a}
        assert await recv(a) == {"stream": "user.balances", "data": {
            "asset": "USDC", "available": "100.000000", "locked": "2.500000"}}
        assert await recv(b) == {"stream": "user.orders", "data": order_b}
        await ping_ok(b)  # nothing else queued for b: it never saw user 1's data
        await ping_ok(a)
        [(_, n)] = await redis_client.pubsub_numsub(keys.user_channel("1"))
        assert n == 1
        registered = [user for user in ("1", "2", "3") if (await redis_client.zscore(
            keys.subscribers_key(keys.user_tag(user)), user) or 0) >= int(time.time() * 1000)]
        assert registered == ["1", "2"]  # engines publish user@ only for these
        await request(a, "UNSUBSCRIBE", ["user.orders", "user.fills", "user.balances"], 3)
        [(_, n)] = await redis_client.pubsub_numsub(keys.user_channel("1"))
        assert n == 0


async def test_ticker_book_ticker_and_klines(
    gw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    now = int(time.time() * 1000)
    ticker = {"market": M, "open": "10.00", "high": "12.00", "low": "9.00", "last": "11.00",
              "volume": "3.000", "quoteVolume": "33.00000", "changePercent": "10.00",
              "count": 3, "bestBid": "10.99", "bestAsk": "11.01", "openTime": now - 86_400_000,
              "closeTime": now, "ts": now}
    async with session.ws_connect(gw.ws_url) as ws:
        await subscribe(ws, "ticker@SOL/USDC", "bookTicker@SOL/USDC", "kline_1m@SOL/USDC")
        await redis_client.publish(keys.ticker_channel(M), orjson.dumps(ticker))
        assert await recv(ws) == {"stream": "ticker@SOL/USDC", "data": ticker}
        bt = {"market": M, "bidPrice": "10.99", "bidQty": "1.000", "askPrice": "11.01",
              "askQty": "2.000", "u": 5, "ts": now}
        await redis_client.publish(keys.book_ticker_channel(M), orjson.dumps(bt))
        assert await recv(ws) == {"stream": "bookTicker@SOL/USDC", "data": bt}
        trades = [
            {"tradeId": "1", "market": M, "price": "10.00", "quantity": "1.000",
             "quoteQuantity": "10.00000", "takerSide": "buy", "ts": now, "seq": 1},
            {"tradeId": "2", "market": M, "price": "12.00", "quantity": "0.500",
             "quoteQuantity": "6.00000", "takerSide": "sell", "ts": now, "seq": 1},
        ]
        await redis_client.publish(keys.trades_channel(M), orjson.dumps(trades))
        k = (await recv(ws))
        assert k["stream"] == "kline_1m@SOL/USDC"
        assert {x: k["data"][x] for x in ("open", "high", "low", "close", "volume", "count",
                                          "closed")} == {
            "open": "10.00", "high": "12.00", "low": "10.00", "close": "12.00",
            "volume": "1.500", "count": 2, "closed": False}
        assert k["data"]["openTime"] == now - now % 60_000
    async with session.ws_connect(gw.ws_url) as late:  # a late subscriber gets the latest
        await subscribe(late, "ticker@SOL/USDC", "kline_1m@SOL/USDC", "bookTicker@SOL/USDC")
        got = {m["stream"]: m["data"] for m in [await recv(late) for _ in range(3)]}
        assert got["ticker@SOL/USDC"] == ticker and got["bookTicker@SOL/USDC"] == bt
        assert got["kline_1m@SOL/USDC"]["count"] == 2


async def test_idle_socket_closed(make_gateway: Any, session: aiohttp.ClientSession) -> None:
    gw = await make_gateway(idle_timeout_s=0.5)
    async with session.ws_connect(gw.ws_url) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and "idle" in msg.extra


async def test_graceful_shutdown_sends_close_frames(
    make_gateway: Any, session: aiohttp.ClientSession
) -> None:
    gw = await make_gateway()
    async with session.ws_connect(gw.ws_url) as ws:
        await subscribe(ws, "trades@SOL/USDC")
        stopping = asyncio.create_task(gw.gateway.stop())
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1001 and msg.extra == "server shutdown"
        await stopping
