"""`./cryptex up` restarted on its own data with a large AOF (issue 11, defect 8).

The AOF is filled through the stack's own Redis (Lua-written hashes and stream entries, ~55 MB by default;
CRYPTEX_TEST_AOF_MB sets another size). On restart Redis answers LOADING while it reads the
file: `up` must wait for it, then the exchange must answer and hold its data.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from tests.launcher.support import ADMIN, UpEnv, new_state_dir, ready_status, remove_state, server_pids, start_up

pytestmark = pytest.mark.slow
SOL = "SOL/USDC"
FILLER = "test:filler"
AOF_MB = int(os.environ.get("CRYPTEX_TEST_AOF_MB", "55"))


@pytest.fixture
def env() -> Iterator[UpEnv]:
    env = UpEnv(new_state_dir())
    yield env
    remove_state(env)


# Like the exchange's own scripts (settle, enqueue), one Lua call writes many small commands:
# Redis logs them as one MULTI/EXEC block of effects, the slowest kind of AOF to load.
FILL_SCRIPT = """
local n, base = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = base, base + n - 1 do
  redis.call('HINCRBY', 'test:filler:' .. (i % 5000), 'f' .. (i % 200), 1)
  if i % 10 == 0 then redis.call('XADD', KEYS[1], '*', 'n', i, 'p', ARGV[3]) end
end
return n
"""


async def fill_aof(env: UpEnv, megabytes: int) -> int:
    """Run the fill script until the AOF holds `megabytes`; returns the filler stream's length."""
    redis = aioredis.Redis.from_url(env.redis_url)
    try:
        await redis.config_set("auto-aof-rewrite-percentage", 0)  # keep the log as written, not compacted
        base, payload = 0, "x" * 150
        while int((await redis.info("persistence"))["aof_current_size"]) < megabytes * 1_000_000:
            await redis.eval(FILL_SCRIPT, 1, FILLER, 20_000, base, payload)
            base += 20_000
        return int(await redis.xlen(FILLER))
    finally:
        await redis.aclose()


async def place_resting_sell(env: UpEnv) -> tuple[str, str, str]:
    async with CryptexClient(env.api_url, admin_token=ADMIN) as admin:
        maker = await admin.new_funded_user({"SOL": "10"}, tx_prefix=uuid.uuid4().hex[:8])
        r = await maker.place_order(side="sell", type="limit", price="100", quantity="1", market=SOL)
        assert r.status == 200, r
        return maker.api_key or "", maker.api_secret or "", r.body["order"]["orderId"]


async def check_after_restart(env: UpEnv, maker_keys: tuple[str, str, str], filler_len: int) -> None:
    redis = aioredis.Redis.from_url(env.redis_url)
    try:
        assert int(await redis.xlen(FILLER)) == filler_len
    finally:
        await redis.aclose()
    key, secret, order_id = maker_keys
    async with CryptexClient(env.api_url, admin_token=ADMIN) as admin:
        maker = admin.with_keys(key, secret)
        r = await maker.get_order(order_id)
        assert r.status == 200 and r.body["status"] == "new", r
        taker = await admin.new_funded_user({"USDC": "1000"}, tx_prefix=uuid.uuid4().hex[:8])
        r = await taker.place_order(side="buy", type="limit", price="100", quantity="1", market=SOL)
        assert r.status == 200 and r.body["order"]["status"] == "filled", r
        assert (await maker.balance_map())["USDC"]["available"] == "99.900000"


async def redis_error_stats(env: UpEnv) -> dict[str, object]:
    """Redis counts every command it refused (LOADING while it reads its AOF, ...)."""
    redis = aioredis.Redis.from_url(env.redis_url)
    try:
        return dict(await redis.info("errorstats"))
    finally:
        await redis.aclose()


def aof_bytes(env: UpEnv) -> int:
    return sum(p.stat().st_size for p in (env.state / "redis" / "appendonlydir").iterdir())


def test_up_restarts_on_its_own_data_with_a_large_aof(env: UpEnv) -> None:
    """issue 11 defect 8: a second start on a ~50 MB AOF died with BusyLoadingError (Redis
    still loading) and left Redis and PostgreSQL running. It must wait and come up whole."""
    first = start_up(env)
    first.wait_up(120)
    maker_keys = asyncio.run(place_resting_sell(env))
    filler_len = asyncio.run(fill_aof(env, AOF_MB))
    assert first.stop() == 0, first.output
    assert server_pids(env) == {}
    size = aof_bytes(env)
    assert size >= AOF_MB * 1_000_000

    impatient = start_up(env.with_more(CRYPTEX_START_TIMEOUT_S="0.2"))  # loading ~55 MB takes longer
    assert impatient.wait_exit(60) != 0, impatient.output
    assert "still loading" in impatient.output, impatient.output
    assert server_pids(env) == {}, f"left running after a failed start: {server_pids(env)}"

    second = start_up(env)
    took = second.wait_up(120)
    print(f"\nrestart on a {size / 1e6:.1f} MB AOF: up after {took:.1f}s")
    try:
        errors = asyncio.run(redis_error_stats(env))
        assert "errorstat_LOADING" not in errors, f"commands were sent while Redis was loading: {errors}"
        deadline = time.monotonic() + 30
        while ready_status(env) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready_status(env) == 200
        asyncio.run(check_after_restart(env, maker_keys, filler_len))
    finally:
        code = second.stop(signal.SIGTERM)
    assert code == 0, second.output
    assert "=" in second.exit_codes() and set(re.findall(r"=(-?\d+)", second.exit_codes())) == {"0"}, second.output
    assert server_pids(env) == {}
