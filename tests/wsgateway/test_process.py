"""`python -m cryptex_wsgateway` as a real process: /ws, /healthz and /readyz on its public
port, /metrics only on its ops port; SIGTERM sends every socket a close frame and exits 0;
two processes run side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from cryptex_common import keys
from cryptex_common.registry import register_market
from tests.support.servers import free_port, wait_for_port
from tests.wsgateway.conftest import SOL, recv, subscribe


def start_process(redis_url: str, ops_port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "CRYPTEX_REDIS_URL": redis_url, "CRYPTEX_PORT": str(port),
           "CRYPTEX_HOST": "127.0.0.1", "CRYPTEX_OPS_PORT": str(ops_port)}
    proc = subprocess.Popen([sys.executable, "-m", "cryptex_wsgateway"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_port(port)
    return proc, port


@pytest.fixture
def processes(redis_srv: Any) -> Iterator[list]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


async def test_metrics_only_on_the_ops_port(
    redis_client: aioredis.Redis, redis_srv: Any, processes: list
) -> None:
    """issue 11 follow-up: /metrics was served on the public WebSocket port. The chart's
    probes stay on the public port (/healthz, /readyz); Prometheus scrapes the ops port."""
    await register_market(redis_client, SOL)
    ops_port = free_port()
    proc, port = start_process(redis_srv.url, ops_port)
    processes.append(proc)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 404
        wait_for_port(ops_port)
        for path in ("/healthz", "/readyz"):
            for p in (port, ops_port):
                async with session.get(f"http://127.0.0.1:{p}{path}") as resp:
                    assert resp.status == 200, (p, path)
        async with session.get(f"http://127.0.0.1:{ops_port}/metrics") as resp:
            assert resp.status == 200
            assert "cryptex_ws_connections" in await resp.text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


async def test_two_processes_fan_out_and_stop_cleanly(
    redis_client: aioredis.Redis, redis_srv: Any, processes: list
) -> None:
    await register_market(redis_client, SOL)
    (p1, port1), (p2, port2) = start_process(redis_srv.url), start_process(redis_srv.url)
    processes.extend([p1, p2])
    async with aiohttp.ClientSession() as session:
        for port in (port1, port2):
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200
        a = await session.ws_connect(f"ws://127.0.0.1:{port1}/ws")
        b = await session.ws_connect(f"ws://127.0.0.1:{port2}/ws")
        for ws in (a, b):
            await subscribe(ws, "trades@SOL/USDC")
        trades = [{"tradeId": "1", "market": "SOL/USDC", "price": "10.00", "quantity": "1.000",
                   "quoteQuantity": "10.00000", "takerSide": "buy", "ts": 1, "seq": 1}]
        await redis_client.publish(keys.trades_channel("SOL/USDC"), orjson.dumps(trades))
        for ws in (a, b):
            assert (await recv(ws))["data"] == trades
        p1.send_signal(signal.SIGTERM)
        msg = await a.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and a.close_code == 1001
        assert p1.wait(15) == 0
        await b.send_str('{"method":"PING","id":1}')
        assert await recv(b) == {"id": 1, "result": "pong"}  # the other process carries on
        await b.close()
    p2.send_signal(signal.SIGTERM)
    assert p2.wait(15) == 0
    out = p2.stdout.read().decode() if p2.stdout else ""
    assert '"service":"wsgateway"' in out
