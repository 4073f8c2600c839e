"""HTTP round trip: signed POST /api/v1/order, waiting for the engine's reply, at 1, 8 and
64 concurrent clients. Prints orders/s, p50/p99/max latency and the CPU each server
process spent per order (utime+stime from /proc/<pid>/stat over the level / orders), per
level. CPU per order is steadier than wall time on a shared machine.

    .venv/bin/python bench/bench_http.py [--seconds 10] [--levels 1 8 64] [--api-workers N]
                                         [--load client|wrk]

`--load wrk` drives the same signed orders from wrk (one thread, N connections) with
requests signed in advance, so the load generator takes little of the two cores and the
servers' CPU per order is measured with less contention (requests signed for the
timestamp window: each level runs at most 4 s).

Starts its own Redis, the API and the SOL/USDC engine as real processes (the launcher's
Stack). The load generator is Python/aiohttp on the same 2-core machine, so it competes
with the servers for CPU: the figures are a floor, not the servers' ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptex_client import CryptexClient  # noqa: E402
from cryptex_common.auth import sign  # noqa: E402
from cryptex_common.markets import load_markets_yaml  # noqa: E402
from cryptex_common.registry import register_market  # noqa: E402
from cryptex_launcher.stack import Stack, free_port  # noqa: E402
from tests.support.servers import redis_server  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process and its finished children, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]
    return (fields[0] + fields[2]) / TICKS_PER_S, (fields[1] + fields[3]) / TICKS_PER_S


def cpu_of(pids: list[int]) -> tuple[float, float]:
    times = [cpu_s(p) for p in pids]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def level(admin: CryptexClient, clients: int, seconds: float, pids: dict[str, list[int]]) -> str:
    users = [await admin.new_funded_user({"SOL": "100000000", "USDC": "100000000000"},
                                         tx_prefix=f"{clients}-{i}-") for i in range(max(2, clients))]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        rng = random.Random(i)
        user = users[i % len(users)]
        while time.perf_counter() < deadline:
            side = rng.choice(["buy", "sell"])
            price = f"{150 + rng.randint(-5, 5) / 100:.2f}"
            started = time.perf_counter()
            r = await user.place_order(side=side, type="limit", price=price, quantity="0.1",
                                       market="SOL/USDC")
            latencies.append(time.perf_counter() - started)
            statuses[r.status] = statuses.get(r.status, 0) + 1

    cpu_before = {name: cpu_of(ps) for name, ps in pids.items()}
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    cpu_used = {name: tuple(a - b for a, b in zip(cpu_of(ps), cpu_before[name], strict=True))
                for name, ps in pids.items()}
    for u in users:
        await u.cancel_all("SOL/USDC")
    return (f"clients={clients:3d} orders={len(latencies):6d} orders/s={len(latencies) / elapsed:7,.0f} "
            f"p50={pct(latencies, 0.5):6.2f}ms p99={pct(latencies, 0.99):6.2f}ms "
            f"max={max(latencies) * 1000:7.2f}ms statuses={statuses} cpu/order: "
            + " ".join(f"{name}={sum(used) / len(latencies) * 1e6:.0f}us"
                       f"(user {used[0] / len(latencies) * 1e6:.0f} sys {used[1] / len(latencies) * 1e6:.0f})"
                       for name, used in cpu_used.items()))


WRK_SCRIPT = """
local reqs, i = {}, 0
init = function(args)
  for line in io.lines(args[1]) do reqs[#reqs + 1] = (line:gsub("\\t", "\\r\\n")) end
end
request = function()
  i = i + 1
  return reqs[i] or reqs[#reqs]
end
"""


async def wrk_level(admin: CryptexClient, clients: int, seconds: float, pids: dict[str, list[int]],
                    port: int, workdir: Path) -> str:
    """One level driven by wrk over requests signed in advance for the next few seconds."""
    seconds = max(1, min(int(seconds), 4))  # every signature must stay inside the +/- 5 s window
    users = [await admin.new_funded_user({"SOL": "100000000", "USDC": "100000000000"},
                                         tx_prefix=f"wrk{clients}-{i}-") for i in range(max(2, clients))]
    rng = random.Random(clients)
    ts0 = int(time.time() * 1000) + 1000
    lines = []
    for n in range(int(seconds * 6000)):  # more than the API can take in `seconds`
        user = users[n % len(users)]
        side = rng.choice(["buy", "sell"])
        body = (f'{{"side":"{side}","type":"limit","price":"{150 + rng.randint(-5, 5) / 100:.2f}",'
                f'"quantity":"{(100 + n % 2000) / 1000:.3f}","market":"SOL/USDC"}}')  # unique per ts
        ts = str(ts0 + n // 2000)
        assert user.api_key and user.api_secret
        sig = sign(user.api_secret, ts, "POST", "/api/v1/order", body)
        lines.append(f"POST /api/v1/order HTTP/1.1\tHost: 127.0.0.1\tContent-Type: application/json\t"
                     f"X-CX-KEY: {user.api_key}\tX-CX-TS: {ts}\tX-CX-SIGN: {sig}\t"
                     f"Content-Length: {len(body)}\t\t{body}")
    reqfile, script = workdir / f"reqs-{clients}.txt", workdir / "signed.lua"
    reqfile.write_text("\n".join(lines) + "\n")
    script.write_text(WRK_SCRIPT)
    while time.time() * 1000 < ts0 - 900:
        await asyncio.sleep(0.01)
    cpu_before = {name: cpu_of(ps) for name, ps in pids.items()}
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script),
        f"http://127.0.0.1:{port}", "--", str(reqfile), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = (await proc.communicate())[0].decode()
    if "requests in" not in out:
        raise RuntimeError(f"wrk failed: {out}")
    cpu_used = {name: tuple(a - b for a, b in zip(cpu_of(ps), cpu_before[name], strict=True))
                for name, ps in pids.items()}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    ok = total - (int(bad.group(1)) if bad else 0)
    pcts = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    for u in users:
        await u.cancel_all("SOL/USDC")
    return (f"clients={clients:3d} orders={ok:6d} (non-2xx {total - ok}) orders/s={ok / seconds:7,.0f} "
            f"p50={pcts.get('50')} p99={pcts.get('99')} (wrk) cpu/order: "
            + " ".join(f"{name}={sum(used) / max(ok, 1) * 1e6:.0f}us"
                       f"(user {used[0] / max(ok, 1) * 1e6:.0f} sys {used[1] / max(ok, 1) * 1e6:.0f})"
                       for name, used in cpu_used.items()))


def server_pids(stack: Stack) -> dict[str, list[int]]:
    """The pids of each service: the API's worker processes are its children, if any."""
    out: dict[str, list[int]] = {}
    for name, svc in stack.services.items():
        if svc.process is None:
            continue
        pid = svc.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        kids = [int(c) for c in children.read_text().split()] if children.exists() else []
        out[name.split("-")[0]] = [pid, *kids]
    return out


async def run(seconds: float, levels: list[int], api_workers: int, load: str, log_level: str) -> None:
    specs = [s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC"]
    with redis_server() as server:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(server.url)
        for spec in specs:
            await register_market(r, spec)
        await r.aclose()
        state = Path(tempfile.mkdtemp(prefix="cryptex-bench-"))
        stack = Stack(redis_url=server.url, database_url="postgresql://127.0.0.1:1/none", markets=specs,
                      state_dir=state, admin_token="bench", api_port=free_port(), with_wsgateway=False,
                      with_dbproc=False, extra_env={"CRYPTEX_HISTORY_ENABLED": "false",
                                                    "CRYPTEX_RATE_LIMIT_PER_S": "1000000",
                                                    "CRYPTEX_RATE_LIMIT_BURST": "1000000",
                                                    "CRYPTEX_LOG_LEVEL": log_level,
                                                    "CRYPTEX_API_WORKERS": str(api_workers)})
        stack.start_all()
        try:
            async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token="bench") as admin:
                await admin.markets()  # warm: every worker has started
                pids = server_pids(stack)
                print(f"pids: {pids}", flush=True)
                for clients in levels:
                    if load == "wrk":
                        print(await wrk_level(admin, clients, seconds, pids, stack.api_port, state), flush=True)
                    else:
                        print(await level(admin, clients, seconds, pids), flush=True)
        finally:
            stack.stop_all()
            shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--api-workers", type=int, default=1, help="CRYPTEX_API_WORKERS")
    parser.add_argument("--load", choices=["client", "wrk"], default="client")
    parser.add_argument("--log-level", default="WARNING", help="the services' CRYPTEX_LOG_LEVEL (INFO: as deployed)")
    args = parser.parse_args()
    print(f"command: .venv/bin/python bench/bench_http.py --seconds {args.seconds} "
          f"--levels {' '.join(map(str, args.levels))} --api-workers {args.api_workers} --load {args.load} "
          f"--log-level {args.log_level}")
    asyncio.run(run(args.seconds, args.levels, args.api_workers, args.load, args.log_level))


if __name__ == "__main__":
    main()
