"""Browser fixtures: the whole exchange as real processes (API, engines, WebSocket gateway,
DB processor on a real PostgreSQL, the demo market maker) on free ports, and a real headless
Chromium (Debian's `chromium`) driven by Playwright.

Without Chromium or Playwright the tests skip, saying what is missing, except under CI=true,
where they fail: CI must install them (scripts/install-browser.sh, `pip install playwright`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptex_launcher.stack import Stack
from tests.e2e.conftest import ADMIN, make_stack, register_all
from tests.support.servers import PostgresServer, RedisServer, new_database, redis_server, start_postgres

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = os.environ.get("CRYPTEX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def missing_browser_tools() -> str | None:
    """What is missing to run a real browser, or None."""
    problems = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"no Chromium at {CHROMIUM} (run scripts/install-browser.sh)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problems.append("Python playwright is not installed (.venv/bin/pip install playwright)")
    return "; ".join(problems) or None


@pytest.fixture(scope="session")
def browser_tools() -> None:
    missing = missing_browser_tools()
    if missing is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run under CI: {missing}", pytrace=False)
    pytest.skip(f"browser tests skipped: {missing}")


@pytest.fixture(scope="module")
def web_redis(browser_tools: None) -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def web_postgres(browser_tools: None) -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


async def _wait_for_live_book(api_url: str, timeout_s: float = 60.0) -> None:
    """Until the demo market maker has both sides of the SOL/USDC book up."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{api_url}/api/v1/depth", params={"market": "SOL_USDC"}) as r:
                    last = await r.json()
                if last.get("bids") and last.get("asks"):
                    return
            except (aiohttp.ClientError, ValueError) as exc:
                last = exc
            await asyncio.sleep(0.3)
    raise TimeoutError(f"the demo market maker did not fill the book: {last!r}")


@pytest.fixture(scope="module")
def web_stack(web_redis: RedisServer, web_postgres: PostgresServer) -> Iterator[Stack]:
    database_url = asyncio.run(new_database(web_postgres, "cryptex"))
    stack = make_stack(web_redis.url, database_url, with_wsgateway=True, with_dbproc=True,
                       with_demo=True)
    asyncio.run(register_all(web_redis.url, stack))
    stack.start_all()
    try:
        asyncio.run(_wait_for_live_book(f"http://127.0.0.1:{stack.api_port}"))
        yield stack
    finally:
        codes = stack.stop_all()
        logs = {name: stack.log_text(name)[-3000:] for name in stack.services}
        shutil.rmtree(stack.state_dir, ignore_errors=True)
    # the demo market maker is a plain asyncio.run loop that SIGTERM simply ends
    failed = {k: v for k, v in codes.items() if v not in (0, None) and k != "demo"}
    assert not failed, f"services did not stop cleanly: {failed}\n{logs}"


@pytest.fixture
async def browser(browser_tools: None) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                            headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """artifacts/browser/, emptied of the last run's screenshots (gitignored; CI keeps it)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


__all__ = ["ADMIN"]
