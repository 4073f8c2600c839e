"""SIGTERM, for every service as a real process under a running order flow: it stops taking
work, finishes what it holds, (engine: settles and snapshots, hands the lease over), flushes,
and exits 0 within a bounded time; afterwards nothing is lost (the ledger checks hold)."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time

import aiohttp
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys
from cryptex_engine.snapshots import decode_snapshot
from cryptex_launcher.stack import Stack, wait_for_port
from tests.chaos.support import (
    ADMIN,
    BTC,
    SOL,
    FlowLog,
    check_ledger,
    engine_name,
    funded_users,
    make_stack,
    register_all,
    trader,
    wait_engine_caught_up,
)
from tests.support.servers import PostgresServer, new_database, redis_server

BOUND_S = 10.0  # every service must be gone within this after SIGTERM


def sigterm(stack: Stack, name: str) -> tuple[int, float]:
    proc = stack.services[name].process
    assert proc is not None and proc.poll() is None, f"{name} is not running"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(BOUND_S + 5)
    return code, time.monotonic() - started


async def test_sigterm_each_service_under_load_exits_0_in_bounded_time(postgres: PostgresServer) -> None:
    db_url = await new_database(postgres)
    with redis_server(appendonly=True) as server:
        await register_all(server.url)
        stack = make_stack(server.url, db_url, with_wsgateway=True, with_dbproc=True)
        stack.start_all()
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        log = FlowLog()
        stop = asyncio.Event()
        try:
            async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin:
                users = await funded_users(admin, 4, log)
                flow = [asyncio.create_task(trader(u, random.Random(i), stop, log, pace_s=0.02))
                        for i, u in enumerate(users)]
                await asyncio.sleep(2.0)

                # engine: settles the batch in hand, snapshots it, releases the lease
                name = engine_name(SOL)
                code, took = sigterm(stack, name)
                assert (code, took < BOUND_S) == (0, True), (code, took, stack.log_text(name)[-2000:])
                snap = decode_snapshot(await redis.get(keys.snapshot_key(SOL)))
                assert snap["seq"] == int(await redis.get(keys.settled_seq_key(SOL)))
                assert await redis.get(keys.engine_lease_key(SOL)) is None  # handed over at once
                stack.start(name)
                await asyncio.sleep(1.0)

                # dbproc: commits and acks the round it is writing
                code, took = sigterm(stack, "dbproc")
                assert (code, took < BOUND_S) == (0, True), (code, took, stack.log_text("dbproc")[-2000:])
                stack.start("dbproc")

                # wsgateway: every socket gets a close frame (1001), then exit 0
                async with aiohttp.ClientSession() as session:
                    ws = await session.ws_connect(f"ws://127.0.0.1:{stack.ws_port}/ws")
                    await ws.send_json({"method": "SUBSCRIBE", "params": [f"trades@{SOL}"], "id": 1})
                    await ws.receive_json(timeout=5)
                    code, took = sigterm(stack, "wsgateway")
                    assert (code, took < BOUND_S) == (0, True), (code, took)
                    while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                        pass
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                        aiohttp.WSMsgType.CLOSING)
                    assert ws.close_code == 1001, ws.close_code
                stack.start("wsgateway")

                # api: in-flight requests are answered, then exit 0
                code, took = sigterm(stack, "api")
                assert (code, took < BOUND_S) == (0, True), (code, took, stack.log_text("api")[-2000:])
                stack.start("api")
                wait_for_port(stack.api_port)
                await asyncio.sleep(1.5)
                stop.set()
                await asyncio.gather(*flow)
            for symbol in (SOL, BTC):
                await wait_engine_caught_up(server.url, symbol, stack.services[engine_name(symbol)].ops_port)  # type: ignore[arg-type]
            await check_ledger(server.url, log, users, {})
            assert "engine stopped" in stack.log_text(engine_name(SOL))
        finally:
            stop.set()
            codes = stack.stop_all(timeout_s=BOUND_S + 5)
            await redis.aclose()
            shutil.rmtree(stack.state_dir, ignore_errors=True)
        assert all(c == 0 for c in codes.values()), codes
