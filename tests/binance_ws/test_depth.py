"""Binance's local order book recipe on the real stack: subscribe `<sym>@depth@100ms`,
buffer, read REST depth (`/api/v3/depth`, `lastUpdateId` L), drop updates with u <= L,
require the first applied one to have U <= L+1 <= u and every later one U == previous
u + 1, apply them, and end equal to REST depth under a random order flow.

The random flows run on BTC/USDC, so the SOL/USDC book stays empty for the tests that
cross exact pairs there."""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from cryptex_client import CryptexClient
from tests.binance_ws.conftest import Exchange, funded

pytestmark = pytest.mark.slow
FLOW_MARKET, FLOW_SYMBOL = "BTC/USDC", "BTCUSDC"
FLOW_FUNDS = {"BTC": "1000", "USDC": "2000000"}


class LocalBook:
    """Binance's "How to manage a local order book correctly", strictly."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.last = int(snapshot["lastUpdateId"])
        self.bids = {p: q for p, q in snapshot["bids"]}
        self.asks = {p: q for p, q in snapshot["asks"]}
        self.first = True
        self.applied = 0

    def apply(self, e: dict[str, Any]) -> None:
        assert e["e"] == "depthUpdate" and e["s"] == FLOW_SYMBOL
        if e["u"] <= self.last:
            return
        if self.first:
            assert e["U"] <= self.last + 1 <= e["u"], (e["U"], self.last, e["u"])
            self.first = False
        else:
            assert e["U"] == self.last + 1 and e["pu"] == self.last, (e["U"], e["pu"], self.last)
        for side, levels in ((self.bids, e["b"]), (self.asks, e["a"])):
            for p, q in levels:
                if Decimal(q) == 0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.last = e["u"]
        self.applied += 1

    def levels(self, n: int) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda x: -Decimal(x[0]))[:n]
        asks = sorted(self.asks.items(), key=lambda x: Decimal(x[0]))[:n]
        return [list(b) for b in bids], [list(a) for a in asks]


async def rest_depth(s: aiohttp.ClientSession, ex: Exchange, limit: int = 1000) -> dict[str, Any]:
    async with s.get(f"{ex.api}/api/v3/depth", params={"symbol": FLOW_SYMBOL, "limit": str(limit)}) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def flow(users: list[CryptexClient], rng: random.Random, n: int) -> int:
    """Random limit and market orders around 100 on FLOW_MARKET and some cancels; returns
    how many orders were accepted."""
    accepted, open_orders = 0, list[tuple[int, str]]()
    for _ in range(n):
        u = rng.randrange(len(users))
        if rng.random() < 0.15 and open_orders:
            owner, oid = open_orders.pop(rng.randrange(len(open_orders)))
            await users[owner].cancel_order(oid)
            continue
        side, qty = rng.choice(["buy", "sell"]), f"{rng.randint(5_000, 200_000) / 100_000:.5f}"
        if rng.random() < 0.1:
            r = await users[u].place_order(side=side, type="market", quantity=qty, market=FLOW_MARKET)
        else:
            price = f"{100 + rng.randint(-30, 30) / 10:.1f}"
            r = await users[u].place_order(side=side, type="limit", price=price, quantity=qty,
                                           market=FLOW_MARKET)
        if r.status == 200:
            accepted += 1
            if r.body["order"]["status"] in ("new", "partially_filled"):
                open_orders.append((u, r.body["order"]["orderId"]))
    return accepted


async def paced_flow(users: list[CryptexClient], rng: random.Random, bursts: int, per_burst: int,
                     pause_s: float = 0.15) -> int:
    """`flow` in bursts `pause_s` apart, so updates span several 100 ms update periods."""
    accepted = 0
    for _ in range(bursts):
        accepted += await flow(users, rng, per_burst)
        await asyncio.sleep(pause_s)
    return accepted


async def test_book_from_rest_snapshot_and_diffs_equals_rest_depth(
        exchange: Exchange, admin: CryptexClient, session: aiohttp.ClientSession) -> None:
    users = [await funded(admin, FLOW_FUNDS) for _ in range(2)]
    rng = random.Random(13)
    await flow(users, rng, 60)  # a book before the client arrives
    ws = await session.ws_connect(f"{exchange.ws}/ws/{FLOW_SYMBOL.lower()}@depth@100ms")
    buffered: list[dict[str, Any]] = []

    async def read() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            buffered.append(msg.json())

    reader = asyncio.create_task(read())
    # updates while the snapshot is read: some older than it (dropped by the rule)
    traffic = asyncio.create_task(paced_flow(users, rng, bursts=10, per_burst=15))
    while len(buffered) < 3:
        assert not traffic.done()
        await asyncio.sleep(0.005)
    book = LocalBook(await rest_depth(session, exchange))
    assert await traffic > 100
    assert await flow(users, rng, 60) > 40  # and some are all after it
    deadline = time.monotonic() + 10
    done = 0
    while True:
        for e in buffered[done:]:
            book.apply(e)
        done = len(buffered)
        rest = await rest_depth(session, exchange)
        if book.last == rest["lastUpdateId"] and book.levels(1000) == (rest["bids"], rest["asks"]):
            break
        assert time.monotonic() < deadline, (book.last, rest["lastUpdateId"])
        await asyncio.sleep(0.1)
    assert book.applied > 5 and book.bids and book.asks, (book.applied, rest)
    await ws.close()
    reader.cancel()
