"""With Redis gone, the API answers 503 and keeps serving; it never crashes or hangs."""

from __future__ import annotations

import asyncio
import shutil

from cryptex_client import CryptexClient
from tests.e2e.conftest import ADMIN, make_stack, register_all
from tests.support.servers import start_redis


async def test_api_answers_503_while_redis_is_down() -> None:
    server = start_redis()
    stack = make_stack(server.url, extra_env={"CRYPTEX_HISTORY_ENABLED": "false"})
    await register_all(server.url, stack)
    stack.start_all()
    try:
        async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin:
            user = await admin.new_funded_user({"USDC": "100"})
            server.stop()
            r = await asyncio.wait_for(
                user.place_order(side="buy", type="limit", price="10", quantity="1", market="SOL/USDC"), 20)
            assert (r.status, r.body["code"]) == (503, "ENGINE_UNAVAILABLE"), r
            markets = await admin.markets()  # served from the API's registry cache
            assert markets.status == 200 and markets.body
            async with admin.session.get(f"{admin.base_url}/readyz") as ready:
                assert ready.status == 503  # not ready without Redis; /healthz stays alive
            async with admin.session.get(f"{admin.base_url}/healthz") as alive:
                assert alive.status == 200
    finally:
        stack.stop_all()
        server.stop()
        shutil.rmtree(stack.state_dir, ignore_errors=True)
        shutil.rmtree(server.dir, ignore_errors=True)
