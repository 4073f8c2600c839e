"""Issue 11 defect 9: a flood of public requests with no key must not make signed orders
fail. Real sockets against the API process (real Redis, real engines); no timing asserts.

- `flood_stack`: the per-address limit is lifted, so the flood reaches Redis: public reads
  have their own small pool with a bounded wait, orders theirs. Before the fix both shared
  one pool and orders failed with 503 when the flood had taken every connection.
- `limited_stack`: default per-address limits: the flood is answered 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pytest

from cryptex_client import CryptexClient
from cryptex_launcher.stack import Stack
from tests.api.conftest import api_stack
from tests.e2e.conftest import ADMIN

FLOOD_CLIENTS = 800


@pytest.fixture(scope="module")
def flood_stack() -> Iterator[Stack]:
    with api_stack(CRYPTEX_PUBLIC_RATE_LIMIT_PER_S="1000000", CRYPTEX_PUBLIC_RATE_LIMIT_BURST="1000000",
                   CRYPTEX_REDIS_PUBLIC_CONNECTIONS="4", CRYPTEX_REDIS_PUBLIC_WAIT_S="0.2",
                   CRYPTEX_MAX_CONNECTIONS="5000") as running:
        yield running


async def flood(port: int, stop: asyncio.Event, statuses: Counter[int], retry_after: set[str]) -> None:
    """FLOOD_CLIENTS unauthenticated clients asking for the book as fast as they can."""
    url = f"http://127.0.0.1:{port}/api/v1/depth?market=SOL/USDC"
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one_client() -> None:
            while not stop.is_set():
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                        if resp.status == 429:
                            retry_after.add(resp.headers.get("Retry-After", ""))
                except aiohttp.ClientError:
                    statuses[0] += 1  # refused by the connection cap or reset
        await asyncio.gather(*[one_client() for _ in range(FLOOD_CLIENTS)])


async def orders_during_flood(port: int, orders: int = 30) -> tuple[list[int], Counter[int], set[str]]:
    statuses: Counter[int] = Counter()
    retry_after: set[str] = set()
    stop = asyncio.Event()
    async with CryptexClient(f"http://127.0.0.1:{port}", admin_token=ADMIN) as admin:
        user = await admin.new_funded_user({"USDC": "100000"})
        flooding = asyncio.create_task(flood(port, stop, statuses, retry_after))
        deadline = time.monotonic() + 60
        while sum(statuses.values()) < FLOOD_CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the flood is under way
        answers = []
        for i in range(orders):
            r = await user.place_order(side="buy", type="limit", price="10", quantity="1",
                                       market="SOL/USDC", clientOrderId=f"flood-{i}")
            answers.append(r.status)
        stop.set()
        await flooding
        await user.cancel_all("SOL/USDC")
    return answers, statuses, retry_after


def test_signed_orders_succeed_during_a_public_read_flood(flood_stack: Stack) -> None:
    """issue 11 defect 9: a flood of public requests with no key exhausted the API's Redis
    pool and made real signed orders fail with 503."""
    answers, statuses, _ = asyncio.run(orders_during_flood(flood_stack.api_port))
    assert set(answers) <= {200, 202}, (answers, statuses)
    assert statuses[200] > 0 and set(statuses) <= {200, 503}, statuses  # 503: public pool busy
    assert "Traceback" not in flood_stack.log_text("api")


@pytest.fixture(scope="module")
def limited_stack() -> Iterator[Stack]:
    with api_stack(CRYPTEX_MAX_CONNECTIONS="5000") as running:
        yield running


def test_unauthenticated_floods_are_limited_per_address(limited_stack: Stack) -> None:
    """issue 11 defect 9: per-address limits on unauthenticated routes (429 + Retry-After),
    while signed orders (limited per API key) go through."""
    answers, statuses, retry_after = asyncio.run(orders_during_flood(limited_stack.api_port))
    assert set(answers) <= {200, 202}, (answers, statuses)
    assert statuses[429] > statuses[200] > 0, statuses
    assert retry_after and all(int(v) >= 1 for v in retry_after)
