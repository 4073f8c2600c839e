"""`python -m cryptex_dbproc` as a real process: kill -9 mid-batch then restart leaves exactly
one row per trade and exact candles; SIGTERM exits 0; the `migrate` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.dbproc.support import (
    DB_NOT_YET,
    SOL,
    BatchGen,
    candles_from_db,
    candles_recomputed,
    count,
    register,
    stream_drained,
    xadd_batches,
)
from tests.support.eventually import eventually
from tests.support.servers import RedisServer


def spawn(db_url: str, redis_url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CRYPTEX_DATABASE_URL": db_url,
        "CRYPTEX_REDIS_URL": redis_url,
        "CRYPTEX_DBPROC_BLOCK_MS": "50",
        "CRYPTEX_DBPROC_READ_COUNT": "100",
        "CRYPTEX_DBPROC_RETRY_MAX_S": "0.5",
    }
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cryptex_dbproc", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def in_transaction(db_url: str) -> bool:
    """dbproc's session is inside a transaction right now (a round not yet committed)."""
    conn = await asyncpg.connect(db_url)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"))
    finally:
        await conn.close()


@pytest.mark.slow
async def test_kill_9_mid_batch_then_restart_leaves_one_row_per_trade(
    redis_client: Redis, redis_srv: RedisServer, db_url: str, tmp_path: Path
) -> None:
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=31)
    await xadd_batches(redis_client, SOL.symbol, [gen.batch(20, step_ms=30_000)
                                                  for _ in range(1500)])
    total = gen.trade_id
    log = tmp_path / "dbproc.log"
    proc = spawn(db_url, redis_srv.url, log)
    try:
        async def some_committed_and_mid_round() -> bool:
            n = await count(db_url, "SELECT count(*) FROM trades")
            return n > 0 and await in_transaction(db_url)

        await eventually(some_committed_and_mid_round, timeout_s=60, ignoring=DB_NOT_YET)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    written = await count(db_url, "SELECT count(*) FROM trades")
    assert 0 < written < total, "the kill should land before the end of the stream"
    pending = await redis_client.xpending("events:{SOL_USDC}", "dbproc")
    assert pending["pending"] > 0  # delivered, never acked: the restart reads these first

    proc = spawn(db_url, redis_srv.url, log)
    try:
        await eventually(lambda: stream_drained(redis_client, SOL.symbol), timeout_s=120, ignoring=DB_NOT_YET)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await count(db_url, "SELECT count(*) FROM trades") == total
    assert await count(db_url, "SELECT count(*) FROM fills") == 2 * total
    assert await count(db_url, "SELECT count(*) FROM orders") == 2 * total
    assert await candles_from_db(db_url) == await candles_recomputed(db_url)


async def test_sigterm_exits_zero_and_migrate_command(
    redis_client: Redis, redis_srv: RedisServer, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "dbproc.log"
    migrate = spawn(db_url, redis_srv.url, log, "migrate")
    assert migrate.wait(60) == 0
    assert await count(db_url, "SELECT count(*) FROM schema_migrations") == 1
    assert spawn(db_url, redis_srv.url, log, "migrate").wait(60) == 0  # idempotent
    assert spawn(db_url, redis_srv.url, log, "bogus").wait(60) == 2

    await register(redis_client, SOL)
    gen = BatchGen(SOL)
    await xadd_batches(redis_client, SOL.symbol, [gen.batch(2) for _ in range(3)])
    proc = spawn(db_url, redis_srv.url, log)
    try:
        await eventually(lambda: stream_drained(redis_client, SOL.symbol), timeout_s=60, ignoring=DB_NOT_YET)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await count(db_url, "SELECT count(*) FROM trades") == 6
    lines = log.read_text().splitlines()
    assert any('"msg":"dbproc stopped"' in line for line in lines), lines[-5:]
