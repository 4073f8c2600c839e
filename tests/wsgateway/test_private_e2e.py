"""Private streams right after SUBSCRIBE, with real processes: API, engines and gateway (the
launcher's Stack) on a real Redis.

Issue 11 defect 7: private updates were lost right after SUBSCRIBE. Engines published
`user@<id>` only for users in `ws:private-subscribers`, re-read once a second, so an order
placed right after the SUBSCRIBE ack never showed up on user.orders / user.fills. The rule
this test holds the whole exchange to: once a private subscription is acknowledged, every
later event of that user arrives. It is a race, so it is run many times with fresh users.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from cryptex_client import CryptexClient
from tests.e2e.conftest import ADMIN, make_stack, register_all
from tests.support.servers import redis_server
from tests.wsgateway.conftest import auth_params

pytestmark = pytest.mark.slow
M = "SOL/USDC"
ROUNDS = 30


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    with redis_server() as srv:
        st = make_stack(srv.url, with_wsgateway=True, extra_env={"CRYPTEX_HISTORY_ENABLED": "false"})
        asyncio.run(register_all(srv.url, st))
        st.start_all()
        yield st
        codes = st.stop_all()
        shutil.rmtree(st.state_dir, ignore_errors=True)
        assert codes.get("wsgateway") == 0, st.log_text("wsgateway")[-3000:]


async def private_socket(s: aiohttp.ClientSession, url: str, user: CryptexClient) -> Any:
    """AUTH and SUBSCRIBE user.orders + user.fills; returns once both are acknowledged."""
    ws = await s.ws_connect(url)
    await ws.send_json({"method": "AUTH", "id": 1, "params": auth_params(user.api_key, user.api_secret)})
    assert (await ws.receive_json(timeout=5))["result"] == {"userId": user.user_id}  # type: ignore[attr-defined]
    await ws.send_json({"method": "SUBSCRIBE", "id": 2, "params": ["user.orders", "user.fills"]})
    assert await ws.receive_json(timeout=5) == {"id": 2, "result": None}
    return ws


async def collect(ws: Any, sink: list[dict[str, Any]]) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        sink.append(orjson.loads(msg.data))


def seen(msgs: list[dict[str, Any]]) -> tuple[dict[str, str], set[str]]:
    """(last status per order id on user.orders, trade ids on user.fills)."""
    orders = {m["data"]["orderId"]: m["data"]["status"] for m in msgs if m.get("stream") == "user.orders"}
    fills = {m["data"]["tradeId"] for m in msgs if m.get("stream") == "user.fills"}
    return orders, fills


async def one_round(admin: CryptexClient, s: aiohttp.ClientSession, url: str) -> list[str]:
    """Two fresh users subscribe; right after the acks they place a crossing pair. Returns
    what each user's private streams missed (empty when everything arrived)."""
    prefix = uuid.uuid4().hex[:8]
    seller = await admin.new_funded_user({"SOL": "10"}, prefix + "s")
    buyer = await admin.new_funded_user({"USDC": "1000"}, prefix + "b")
    sockets = [await private_socket(s, url, u) for u in (seller, buyer)]
    sinks: list[list[dict[str, Any]]] = [[], []]
    readers = [asyncio.create_task(collect(ws, sink)) for ws, sink in zip(sockets, sinks, strict=True)]
    sell = await seller.place_order(side="sell", type="limit", price="100.00", quantity="1.000", market=M)
    buy = await buyer.place_order(side="buy", type="limit", price="100.00", quantity="1.000", market=M)
    assert sell.status == 200 and buy.status == 200, (sell, buy)
    trade_ids = {f["tradeId"] for f in buy.body["fills"]}
    assert trade_ids and buy.body["order"]["status"] == "filled"
    want = [({sell.body["order"]["orderId"]: "filled"}, trade_ids),
            ({buy.body["order"]["orderId"]: "filled"}, trade_ids)]
    deadline = time.monotonic() + 3
    while any(seen(sink) != w for sink, w in zip(sinks, want, strict=True)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    missed = [f"{who}: got {seen(sink)}, want {w}"
              for who, sink, w in zip(("seller", "buyer"), sinks, want, strict=True) if seen(sink) != w]
    for ws in sockets:
        await ws.close()
    for t in readers:
        t.cancel()
    return missed


async def test_every_private_event_after_the_subscribe_ack_arrives(stack: Any) -> None:
    """issue 11 defect 7: an order placed right after the SUBSCRIBE ack must show up on
    user.orders and its fill on user.fills, for both sides, every time."""
    url = f"ws://127.0.0.1:{stack.ws_port}/ws"
    async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin, \
            aiohttp.ClientSession() as s:
        failures = []
        for i in range(ROUNDS):
            missed = await one_round(admin, s, url)
            if missed:
                failures.append((i, missed))
        assert not failures, f"{len(failures)} of {ROUNDS} rounds lost private events: {failures[:3]}"
