"""Binance facade overhead per order: the same signed limit orders through the native route
(POST /api/v1/order) and through the facade (POST /api/v3/order), against one real stack.

    .venv/bin/python bench/bench_binance.py [--orders 3000] [--concurrency 16] [--rounds 3]

Starts its own Redis (free port), the API and the SOL/USDC engine as processes (no gateway,
no dbproc), funds one user per client, then runs alternating rounds (native, facade, ...)
of `--orders` resting limit buys each (random prices 10.00-50.00, never crossing, FULL
response type on the facade), from `--concurrency` asyncio clients in this process. Per
route it prints the median over rounds of orders/s and of the API process's CPU
microseconds per order (utime+stime from /proc between the first and the last answer), and
the facade's overhead against the native route. Every answer must be 200; anything else
aborts the run. The load generator shares the cores with the servers, so orders/s is
bounded by it too; CPU per order is the figure that isolates the facade's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptex_client import CryptexClient  # noqa: E402
from cryptex_common.auth import sign  # noqa: E402
from cryptex_common.markets import load_markets_yaml  # noqa: E402
from cryptex_common.registry import register_market  # noqa: E402
from cryptex_launcher.stack import Stack, free_port  # noqa: E402
from tests.support.servers import redis_server  # noqa: E402

ADMIN = "bench-admin"
Sender = Callable[[aiohttp.ClientSession, tuple[str, str], str], Awaitable[int]]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def native(session: aiohttp.ClientSession, user: tuple[str, str], price: str) -> int:
    body = orjson.dumps({"market": "SOL/USDC", "side": "buy", "type": "limit", "price": price, "quantity": "0.1"})
    ts = str(int(time.time() * 1000))
    headers = {"X-CX-KEY": user[0], "X-CX-TS": ts, "X-CX-SIGN": sign(user[1], ts, "POST", "/api/v1/order", body),
               "Content-Type": "application/json"}
    async with session.post("/api/v1/order", data=body, headers=headers) as r:
        await r.read()
        return r.status


async def facade(session: aiohttp.ClientSession, user: tuple[str, str], price: str) -> int:
    query = urlencode({"symbol": "SOLUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                       "quantity": "0.1", "price": price, "timestamp": int(time.time() * 1000)})
    signature = hmac.new(user[1].encode(), query.encode(), hashlib.sha256).hexdigest()
    headers = {"X-MBX-APIKEY": user[0], "Content-Type": "application/x-www-form-urlencoded"}
    async with session.post("/api/v3/order", data=f"{query}&signature={signature}", headers=headers) as r:
        await r.read()
        return r.status


async def run_round(base: str, users: list[tuple[str, str]], send: Sender, orders: int, api_pid: int
                    ) -> tuple[float, float]:
    """(orders/s, API CPU µs per order) of one round."""
    left = iter(range(orders))
    statuses: list[int] = []

    async def client(session: aiohttp.ClientSession, user: tuple[str, str]) -> None:
        for _ in left:
            statuses.append(await send(session, user, f"{random.randint(1000, 5000) / 100:.2f}"))

    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=0)) as session:
        cpu0, t0 = cpu_seconds(api_pid), time.perf_counter()
        await asyncio.gather(*(client(session, u) for u in users))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(api_pid) - cpu0
    bad = [s for s in statuses if s != 200]
    if bad:
        raise SystemExit(f"{send.__name__}: {len(bad)} answers were not 200 (first {bad[0]})")
    return orders / wall, cpu / orders * 1e6


async def fund(base: str, count: int) -> list[tuple[str, str]]:
    async with CryptexClient(base, admin_token=ADMIN) as admin:
        users = [await admin.new_funded_user({"USDC": "100000000"}, tx_prefix=f"b{i}-") for i in range(count)]
    return [(str(u.api_key), str(u.api_secret)) for u in users]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    specs = [s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC"]
    state = Path(tempfile.mkdtemp(prefix="bench-binance-"))
    with redis_server() as redis:
        stack = Stack(redis_url=redis.url, database_url="postgresql://127.0.0.1:1/none", markets=specs,
                      state_dir=state, admin_token=ADMIN, api_port=free_port(), ws_port=free_port(),
                      with_wsgateway=False, with_dbproc=False, extra_env={
                          "CRYPTEX_HISTORY_ENABLED": "false", "CRYPTEX_RATE_LIMIT_PER_S": "1000000",
                          "CRYPTEX_RATE_LIMIT_BURST": "1000000", "CRYPTEX_LOG_LEVEL": "WARNING",
                          "CRYPTEX_BINANCE_WEIGHT_LIMIT": "100000000"})

        async def register() -> None:
            import redis.asyncio as aioredis
            r = aioredis.Redis.from_url(redis.url)
            for spec in specs:
                await register_market(r, spec)
            await r.aclose()

        asyncio.run(register())
        stack.start_all()
        try:
            base = f"http://127.0.0.1:{stack.api_port}"
            users = asyncio.run(fund(base, args.concurrency))
            api = stack.services["api"].process
            assert api is not None
            asyncio.run(run_round(base, users, native, 300, api.pid))  # warm-up, both paths
            asyncio.run(run_round(base, users, facade, 300, api.pid))
            results: dict[str, list[tuple[float, float]]] = {"native": [], "facade": []}
            for _ in range(args.rounds):
                for name, send in (("native", native), ("facade", facade)):
                    results[name].append(asyncio.run(run_round(base, users, send, args.orders, api.pid)))
        finally:
            stack.stop_all()
            shutil.rmtree(state, ignore_errors=True)
    print(f"{args.orders} resting limit orders per round, {args.concurrency} clients, {args.rounds} rounds "
          "(medians)")
    med = {n: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for n, rs in results.items()}
    for name, (rate, cpu_us) in med.items():
        print(f"  {name:7s} POST {'/api/v1/order' if name == 'native' else '/api/v3/order'}: "
              f"{rate:8.0f} orders/s   API CPU {cpu_us:7.0f} µs/order")
    extra = med["facade"][1] - med["native"][1]
    print(f"  facade overhead: {extra:+.0f} µs API CPU per order ({extra / med['native'][1] * 100:+.1f}%), "
          f"{(med['facade'][0] / med['native'][0] - 1) * 100:+.1f}% orders/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
