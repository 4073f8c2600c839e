"""The Python fallback load generator of bench/bench_stack.py (when wrk is not installable):
the same four-request cycle as bench/wrk/orders.lua and the same result file, from
aiohttp clients in one process. It costs the machine 3-5x more CPU per order than wrk, so
the servers get less: use it only to compare with itself.

    CX_USERS=users.txt CX_THREADS=8 CX_OUT=out.txt python bench/stack_pyload.py URL SECONDS
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import re
import sys
import time
from collections import deque
from typing import Any

import aiohttp

ORDER_PATH = "/api/v1/order"
ORDER_ID = re.compile(rb'"orderId":\s*"(\d+)"')


class User:
    def __init__(self, key: str, secret: str) -> None:
        self.key, self.secret, self.last_ts = key, secret.encode(), 0

    def headers(self, method: str, path: str, body: str) -> dict[str, str]:
        ts = max(int(time.time() * 1000), self.last_ts + 1)
        self.last_ts = ts
        sig = hmac.new(self.secret, f"{ts}{method}{path}{body}".encode(), hashlib.sha256).hexdigest()
        h = {"X-CX-KEY": self.key, "X-CX-TS": str(ts), "X-CX-SIGN": sig}
        if body:
            h["Content-Type"] = "application/json"
        return h


async def client(tid: int, url: str, users: list[User], deadline: float, result: dict[str, Any]) -> None:
    env = os.environ.get
    market = env("CX_MARKET", "sol/usdc")
    mid, pdec, qdec = int(env("CX_MID_TICKS", "15000")), int(env("CX_PRICE_DECIMALS", "2")), \
        int(env("CX_QTY_DECIMALS", "3"))
    cross_lots, depth = int(env("CX_CROSS_LOTS", "100")), int(env("CX_REST_DEPTH", "4"))
    rng = random.Random(1000 + tid)
    resting: deque[tuple[User, str]] = deque()
    turn, cycle = 0, 0

    def body(side: str, ticks: int, lots: int, tif: str | None = None) -> str:
        extra = f',"timeInForce":"{tif}"' if tif else ""
        return (f'{{"kind":"{side}","type":"limit","price":"{ticks / 10 ** pdec:.{pdec}f}",'
                f'"quantity":"{lots / 10 ** qdec:.{qdec}f}","market":"{market}"{extra}}}')

    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        step = 0
        while time.monotonic() < deadline:
            s, step = step, (step + 1) % 4
            if s in (0, 1):
                if s == 0:
                    cycle += 1
                turn += 1
                user = users[turn % len(users)]
                buy_first = cycle % 2 == 0
                side = ("buy" if buy_first else "sell") if s == 0 else ("sell" if buy_first else "buy")
                kind, method, path = ("maker", "POST", ORDER_PATH) if s == 0 else ("taker", "POST", ORDER_PATH)
                data = body(side, mid, cross_lots, None if s == 0 else "IOC")
            elif s == 2 or len(resting) <= depth:
                turn += 1
                user = users[turn % len(users)]
                side = rng.choice(("buy", "sell"))
                away = rng.randint(10, 50)
                kind, method, path = "rest", "POST", ORDER_PATH
                data = body(side, mid - away if side == "buy" else mid + away, rng.randint(50, 200))
            else:
                user, oid = resting.popleft()
                kind, method, path, data = "cancel", "DELETE", f"{ORDER_PATH}?orderId={oid}", ""
            started = time.perf_counter()
            async with session.request(method, path, data=data or None,
                                       headers=user.headers(method, path, data)) as resp:
                raw = await resp.read()
                status = resp.status
            result["lat"].setdefault(kind, []).append(int((time.perf_counter() - started) * 1e6))
            key = f"{kind}:{status}"
            result["statuses"][key] = result["statuses"].get(key, 0) + 1
            if status not in (200, 202) and len(result["bad"]) < 5:
                result["bad"].append(f"{kind} {status} {raw[:300].decode(errors='replace')}")
            if kind == "rest" and status in (200, 202):
                m = ORDER_ID.search(raw)
                if m:
                    resting.append((user, m.group(1).decode()))


async def main_async(url: str, seconds: float) -> None:
    threads = int(os.environ["CX_THREADS"])
    with open(os.environ["CX_USERS"]) as f:
        lines = [line.split() for line in f if line.strip()]
    per_thread: list[list[User]] = [[] for _ in range(threads)]
    for i, (key, secret) in enumerate(lines):
        per_thread[i % threads].append(User(key, secret))
    result: dict[str, Any] = {"lat": {}, "statuses": {}, "bad": []}
    started = time.monotonic()
    await asyncio.gather(*(client(t, url, per_thread[t], started + seconds, result) for t in range(threads)))
    elapsed = time.monotonic() - started
    n = sum(result["statuses"].values())
    with open(os.environ["CX_OUT"], "w") as out:
        out.write(f"summary requests={n} duration_us={int(elapsed * 1e6)} bytes=0 connect=0 read=0 write=0 "
                  f"status=0 timeout=0\n")
        for key, count in result["statuses"].items():
            out.write(f"status 0 {key} {count}\n")
        for line in result["bad"]:
            out.write("bad " + line.replace("\n", " ") + "\n")
        for kind, values in result["lat"].items():
            out.write(f"lat {kind} " + " ".join(map(str, values)) + "\n")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(sys.argv[1], float(sys.argv[2])))
