"""Binance user data on the real stack with raw WebSocket clients: `/binance/ws/<listenKey>`
(the key from POST /api/v3/userDataStream) and the WebSocket API's
`userDataStream.subscribe.signature`, with exact amounts and fees for a crossing pair, an
IOC remainder, a cancel, the signature checks, and an expired listen key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys
from tests.binance_ws.conftest import Exchange, M, funded, recv
from tests.support.eventually import eventually

pytestmark = pytest.mark.slow


async def new_listen_key(s: aiohttp.ClientSession, ex: Exchange, user: CryptexClient) -> str:
    """POST /api/v3/userDataStream, as every Binance client gets its key."""
    async with s.post(f"{ex.api}/api/v3/userDataStream", headers={"X-MBX-APIKEY": str(user.api_key)}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["listenKey"])


async def events(ws: aiohttp.ClientWebSocketResponse, sink: list[dict[str, Any]]) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        sink.append(msg.json())


def reports(sink: list[dict[str, Any]], order_id: str) -> list[tuple[str, str, str]]:
    return [(e["x"], e["X"], e["z"]) for e in sink if e.get("e") == "executionReport" and e["i"] == int(order_id)]


def last_balances(sink: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for e in sink:
        if e.get("e") == "outboundAccountPosition":
            out.update({b["a"]: (b["f"], b["l"]) for b in e["B"]})
    return out


def sign(secret: str, params: dict[str, Any]) -> dict[str, Any]:
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    return {**params, "signature": hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()}


async def test_listen_key_stream_reports_a_crossing_pair_exactly(
        exchange: Exchange, admin: CryptexClient, session: aiohttp.ClientSession) -> None:
    seller = await funded(admin, {"SOL": "10"})
    buyer = await funded(admin, {"USDC": "1000"})
    sinks: list[list[dict[str, Any]]] = [[], []]
    sockets = []
    for user, sink in zip((seller, buyer), sinks, strict=True):
        ws = await session.ws_connect(f"{exchange.ws}/ws/{await new_listen_key(session, exchange, user)}")
        sockets.append((ws, asyncio.create_task(events(ws, sink))))
    # the handshake completes once the user is followed: no sleep needed before trading
    sell = (await seller.place_order(side="sell", type="limit", price="100.00", quantity="1.000", market=M)).body
    buy = (await buyer.place_order(side="buy", type="limit", price="100.00", quantity="1.000", market=M)).body
    sid, bid = sell["order"]["orderId"], buy["order"]["orderId"]
    trade_id = int(buy["fills"][0]["tradeId"])
    await eventually(lambda: len(reports(sinks[0], sid)) == 2 and len(reports(sinks[1], bid)) == 2
                   and last_balances(sinks[0]).get("USDC") == ("99.900000", "0.000000")
                   and last_balances(sinks[1]).get("SOL") == ("0.998000000", "0.000000000"))
    assert reports(sinks[0], sid) == [("NEW", "NEW", "0.000"), ("TRADE", "FILLED", "1.000")]
    assert reports(sinks[1], bid) == [("NEW", "NEW", "0.000"), ("TRADE", "FILLED", "1.000")]
    maker = next(e for e in sinks[0] if e.get("x") == "TRADE")
    taker = next(e for e in sinks[1] if e.get("x") == "TRADE")
    common = {"e": "executionReport", "s": "SOLUSDC", "o": "LIMIT", "f": "GTC", "q": "1.000", "p": "100.00",
              "x": "TRADE", "X": "FILLED", "l": "1.000", "z": "1.000", "L": "100.00", "t": trade_id,
              "Z": "100.000000", "Y": "100.000000", "r": "NONE", "w": False, "g": -1}
    assert {k: maker[k] for k in common} == common
    assert {k: taker[k] for k in common} == common
    assert (maker["S"], maker["i"], maker["m"], maker["n"], maker["N"]) == ("SELL", int(sid), True, "0.100000", "USDC")
    assert (taker["S"], taker["i"], taker["m"], taker["n"], taker["N"]) == (
        "BUY", int(bid), False, "0.002000000", "SOL")
    assert last_balances(sinks[0]) == {"SOL": ("9.000000000", "0.000000000"), "USDC": ("99.900000", "0.000000")}
    assert last_balances(sinks[1]) == {"USDC": ("900.000000", "0.000000"), "SOL": ("0.998000000", "0.000000000")}
    # each socket saw only its own user's orders
    assert {e["i"] for e in sinks[0] if e.get("e") == "executionReport"} == {int(sid)}
    assert {e["i"] for e in sinks[1] if e.get("e") == "executionReport"} == {int(bid)}
    for ws, task in sockets:
        await ws.close()
        task.cancel()


async def test_ioc_remainder_expires_and_a_cancel_is_reported(
        exchange: Exchange, admin: CryptexClient, session: aiohttp.ClientSession) -> None:
    maker = await funded(admin, {"SOL": "10"})
    taker = await funded(admin, {"USDC": "1000"})
    sink: list[dict[str, Any]] = []
    ws = await session.ws_connect(f"{exchange.ws}/ws/{await new_listen_key(session, exchange, taker)}")
    reader = asyncio.create_task(events(ws, sink))
    await maker.place_order(side="sell", type="limit", price="150.00", quantity="0.400", market=M)
    ioc = (await taker.place_order(side="buy", type="limit", price="150.00", quantity="1.000",
                                   timeInForce="IOC", market=M)).body["order"]
    rest = (await taker.place_order(side="buy", type="limit", price="1.00", quantity="2.000", market=M)).body["order"]
    await taker.cancel_order(rest["orderId"])
    await eventually(lambda: len(reports(sink, ioc["orderId"])) == 3 and len(reports(sink, rest["orderId"])) == 2)
    assert reports(sink, ioc["orderId"]) == [
        ("NEW", "NEW", "0.000"), ("TRADE", "PARTIALLY_FILLED", "0.400"), ("EXPIRED", "EXPIRED", "0.400")]
    assert [e["f"] for e in sink if e.get("i") == int(ioc["orderId"])] == ["IOC"] * 3
    assert reports(sink, rest["orderId"]) == [("NEW", "NEW", "0.000"), ("CANCELED", "CANCELED", "0.000")]
    await ws.close()
    reader.cancel()


async def test_ws_api_signature_subscription(exchange: Exchange, admin: CryptexClient,
                                             session: aiohttp.ClientSession) -> None:
    user = await funded(admin, {"SOL": "5"})
    secret = str(user.api_secret)
    ws = await session.ws_connect(f"{exchange.ws}/ws-api/v3")
    now = int(time.time() * 1000)

    async def ask(rid: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        await ws.send_json({"id": rid, "method": method, "params": params})
        return dict(await recv(ws))

    bad = await ask("1", "userDataStream.subscribe.signature",
                    {**sign(secret, {"apiKey": user.api_key, "timestamp": now}), "signature": "0" * 64})
    assert (bad["status"], bad["error"]["code"]) == (400, -1022)
    stale = await ask("2", "userDataStream.subscribe.signature",
                      sign(secret, {"apiKey": user.api_key, "timestamp": now - 60_000}))
    assert stale["error"] == {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}
    unknown = await ask("3", "userDataStream.subscribe.signature",
                        sign(secret, {"apiKey": "nobody", "timestamp": now}))
    assert (unknown["status"], unknown["error"]["code"]) == (401, -2015)
    assert (await ask("4", "userDataStream.subscribe", {}))["error"]["code"] == -1020
    ok = await ask("5", "userDataStream.subscribe.signature",
                   sign(secret, {"apiKey": user.api_key, "timestamp": int(time.time() * 1000), "recvWindow": 10000}))
    assert ok == {"id": "5", "status": 200, "result": {"subscriptionId": 0}, "rateLimits": []}
    order = (await user.place_order(side="sell", type="limit", price="300.00", quantity="0.500", market=M)).body
    sink: list[dict[str, Any]] = []
    reader = asyncio.create_task(events(ws, sink))
    await eventually(lambda: any(e.get("event", {}).get("e") == "executionReport" for e in sink)
                   and any(e.get("event", {}).get("e") == "outboundAccountPosition" for e in sink))
    report = next(e for e in sink if e.get("event", {}).get("e") == "executionReport")
    assert report["subscriptionId"] == 0
    assert (report["event"]["i"], report["event"]["X"], report["event"]["q"]) == (
        int(order["order"]["orderId"]), "NEW", "0.500")
    position = [e["event"] for e in sink if e.get("event", {}).get("e") == "outboundAccountPosition"][-1]
    assert {b["a"]: (b["f"], b["l"]) for b in position["B"]}["SOL"] == ("4.500000000", "0.500000000")
    await ws.send_json({"id": 6, "method": "userDataStream.unsubscribe", "params": {}})
    await eventually(lambda: any(e.get("id") == 6 for e in sink))
    assert next(e for e in sink if e.get("id") == 6)["result"] == {}
    await ws.close()
    reader.cancel()


async def test_deleted_listen_key_ends_the_stream(exchange: Exchange, admin: CryptexClient,
                                                  session: aiohttp.ClientSession, redis: aioredis.Redis) -> None:
    user = await funded(admin, {"SOL": "1"})
    key = await new_listen_key(session, exchange, user)
    ws = await session.ws_connect(f"{exchange.ws}/ws/{key}")
    await redis.delete(keys.listen_key(key))
    event = await recv(ws, timeout=15)
    assert event["e"] == "listenKeyExpired" and event["listenKey"] == key
    closed = await ws.receive(timeout=5)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_deposit_and_withdrawal_are_balance_updates(
        exchange: Exchange, admin: CryptexClient, session: aiohttp.ClientSession) -> None:
    user = await funded(admin, {"USDC": "10"})
    sink: list[dict[str, Any]] = []
    ws = await session.ws_connect(f"{exchange.ws}/ws/{await new_listen_key(session, exchange, user)}")
    reader = asyncio.create_task(events(ws, sink))
    uid = user.user_id  # type: ignore[attr-defined]
    assert (await admin.deposit(uid, "USDC", "25.5", f"bu-{uid}-1")).status == 200
    assert (await admin.withdraw(uid, "USDC", "0.25", f"bu-{uid}-2")).status == 200
    assert (await admin.deposit(uid, "USDC", "25.5", f"bu-{uid}-1")).status == 200  # a replay: no event
    await eventually(lambda: last_balances(sink).get("USDC") == ("35.250000", "0.000000"))
    await asyncio.sleep(0.3)
    updates = [(e["a"], e["d"]) for e in sink if e.get("e") == "balanceUpdate"]
    assert updates == [("USDC", "25.500000"), ("USDC", "-0.250000")]
    first = next(i for i, e in enumerate(sink) if e.get("e") == "balanceUpdate")
    assert any(e.get("e") == "outboundAccountPosition" for e in sink[first + 1:])  # then the balance
    await ws.close()
    reader.cancel()


async def test_listen_key_in_a_combined_stream(exchange: Exchange, admin: CryptexClient,
                                               session: aiohttp.ClientSession) -> None:
    user = await funded(admin, {"SOL": "2"})
    key = await new_listen_key(session, exchange, user)
    ws = await session.ws_connect(f"{exchange.ws}/stream?streams={key}/solusdc@bookTicker")
    order = (await user.place_order(side="sell", type="limit", price="400.00", quantity="0.100", market=M)).body
    sink: list[dict[str, Any]] = []
    reader = asyncio.create_task(events(ws, sink))
    await eventually(lambda: any(m.get("data", {}).get("e") == "executionReport" for m in sink))
    report = next(m for m in sink if m.get("data", {}).get("e") == "executionReport")
    assert report["stream"] == key and report["data"]["i"] == int(order["order"]["orderId"])
    assert all(m["stream"] in (key, "solusdc@bookTicker") for m in sink)
    await user.cancel_order(order["order"]["orderId"])
    await eventually(lambda: any(m["data"].get("X") == "CANCELED" for m in sink))
    await ws.close()
    reader.cancel()
