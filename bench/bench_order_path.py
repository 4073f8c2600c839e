"""Order path through Redis without HTTP: R1 + hand-over -> engine process -> settle ->
reply on the pub/sub reply channel. Prints orders/s and p50/p99 enqueue-to-reply latency.

    .venv/bin/python bench/bench_order_path.py [--orders 40000] [--concurrency 256]
        [--appendfsync none|everysec|always]

Starts its own Redis (free port) and one real engine process for SOL/USDC. The load is a
mix of resting and crossing limit orders between two users, so about half the orders trade.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptex_common import keys  # noqa: E402
from cryptex_common.ledger import Ledger  # noqa: E402
from cryptex_common.markets import load_markets_yaml  # noqa: E402
from cryptex_common.messages import REPLY_BATCH_ADAPTER, OrderRecord, OrderStatus, PlaceOrderCommand  # noqa: E402
from cryptex_common.registry import register_market  # noqa: E402
from tests.support.servers import free_port, redis_server, wait_for_port  # noqa: E402


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds."""
    return sum(cpu_times(pid))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def make_order(i: int, rng: random.Random, rules, symbol: str, channel: str):  # type: ignore[no-untyped-def]
    side = "buy" if i % 2 else "sell"
    user = "1" if side == "buy" else "2"
    price = 15_000 + rng.randint(-20, 20)
    qty = rng.randint(10, 500)  # >= 1 USDC notional at ~150: no min-notional rejects
    lock = rules.notional_units(price, qty) if side == "buy" else rules.base_units(qty)
    cmd = PlaceOrderCommand(userId=user, side=side, orderType="limit", priceTicks=price, quantityLots=qty,
                            lockedUnits=lock, replyTo=channel, requestId=f"r{i}")
    tail = orjson.dumps(OrderRecord(orderId=0, userId=user, market=symbol, side=side, orderType="limit",
                                    timeInForce="GTC", priceTicks=price, quantityLots=qty,
                                    status=OrderStatus.NEW, createdMs=0, updatedMs=0).model_dump(
        by_alias=True, mode="json", exclude={"order_id", "created_ms", "updated_ms"}))
    return user, ("USDC" if side == "buy" else "SOL"), lock, cmd.model_dump_json(by_alias=True), tail.decode()[1:]


async def drain_run(redis, ledger, spec, rules, orders: int, redis_pid: int) -> None:  # type: ignore[no-untyped-def]
    """Queue `orders` first (engine stopped), then time one engine draining them: the
    engine's own throughput (match + settle + publish), free of load-generator CPU."""
    rng = random.Random(7)
    channel = keys.reply_channel("bench")
    for start in range(0, orders, 200):
        await asyncio.gather(*(
            ledger.place(symbol=spec.symbol, user_id=u, lock_asset=a, lock_units=lk, command_json=c,
                         record_tail_json=t, client_order_id=None)
            for u, a, lk, c, t in (make_order(i, rng, rules, spec.symbol, channel)
                                   for i in range(start, min(orders, start + 200)))))
    url = redis.connection_pool.connection_kwargs
    ops_port = free_port()
    env = {**os.environ, "CRYPTEX_REDIS_URL": f"redis://127.0.0.1:{url['port']}/0",
           "CRYPTEX_OPS_PORT": str(ops_port), "CRYPTEX_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    prof = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
    engine = subprocess.Popen([sys.executable, *prof, "-m", "cryptex_engine", "--market", spec.symbol], env=env)
    settled = 0
    first: tuple[int, float, float] | None = None  # (settled, cpu, time) at the first settled batch
    while settled < orders + 1:  # +1: the configure command registered with the market
        await asyncio.sleep(0.01 if first is None else 0.05)
        settled = int(await redis.get(keys.settled_seq_key(spec.symbol)) or 0)
        if first is None and settled:
            first = (settled, cpu_seconds(engine.pid), time.perf_counter())
            redis_cpu0 = cpu_seconds(redis_pid)
    ended = time.perf_counter()
    elapsed = ended - started
    cpu = cpu_seconds(engine.pid)
    redis_cpu = cpu_seconds(redis_pid) - redis_cpu0
    engine.terminate()
    engine.wait(30)
    assert first is not None
    n, cpu0, t0 = orders + 1 - first[0], first[1], first[2]
    steady = (f"after the first batch: {n / (ended - t0):,.0f} orders/s, "
              f"engine_cpu_per_order={(cpu - cpu0) / max(n, 1) * 1e6:.1f}us "
              f"redis_cpu_per_order={redis_cpu / max(n, 1) * 1e6:.1f}us") if n > 0 else ""
    print(f"mode=drain orders={orders} elapsed={elapsed:.2f}s (incl. ~0.5 s process start) "
          f"orders/s={orders / elapsed:,.0f} engine_cpu={cpu:.2f}s (incl. start); {steady}")


async def run(orders: int, concurrency: int, drain: bool = False, appendfsync: str = "none") -> None:
    spec = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC")
    rules = spec.rules()
    aof = {} if appendfsync == "none" else {"appendonly": True, "appendfsync": appendfsync}
    with redis_server(**aof) as server:  # type: ignore[arg-type]
        redis = aioredis.Redis.from_url(server.url, max_connections=concurrency + 16)
        await register_market(redis, spec)
        ledger = Ledger(redis)
        for user in ("1", "2"):
            for asset in ("SOL", "USDC"):
                await ledger.move_funds(kind="deposit", user_id=user, asset=asset, units=10**17,
                                        tx_id=f"{user}{asset}", record={})
        if drain:
            await drain_run(redis, ledger, spec, rules, orders, server.process.pid)
            await redis.aclose()
            return
        ops_port = free_port()
        env = {**os.environ, "CRYPTEX_REDIS_URL": server.url, "CRYPTEX_OPS_PORT": str(ops_port),
               "CRYPTEX_LOG_LEVEL": "WARNING", "CRYPTEX_PUBLISH_USER_UPDATES": "true"}
        prof = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
        engine = subprocess.Popen([sys.executable, *prof, "-m", "cryptex_engine", "--market", spec.symbol], env=env)
        wait_for_port(ops_port)
        while not int(await redis.get(keys.settled_seq_key(spec.symbol)) or 0):
            await asyncio.sleep(0.01)  # the engine has recovered and settled the configure
        cpu0, redis_cpu0 = cpu_seconds(engine.pid), cpu_seconds(server.process.pid)
        channel = keys.reply_channel("bench")
        waiting: dict[str, tuple[float, asyncio.Future[None]]] = {}
        latencies: list[float] = []
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)

        async def listen() -> None:
            async for msg in pubsub.listen():
                now = time.perf_counter()
                for reply in REPLY_BATCH_ADAPTER.validate_json(msg["data"]):
                    started, fut = waiting.pop(reply.request_id)
                    latencies.append(now - started)
                    fut.set_result(None)

        listener = asyncio.create_task(listen())
        rng = random.Random(7)
        counter = iter(range(orders))

        async def producer(worker: int) -> None:
            loop = asyncio.get_running_loop()
            for i in counter:
                user, asset, lock, command, tail = make_order(i, rng, rules, spec.symbol, channel)
                fut: asyncio.Future[None] = loop.create_future()
                waiting[f"r{i}"] = (time.perf_counter(), fut)
                await ledger.place(symbol=spec.symbol, user_id=user, lock_asset=asset, lock_units=lock,
                                   command_json=command, record_tail_json=tail, client_order_id=None)
                await fut

        started = time.perf_counter()
        await asyncio.gather(*(producer(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(engine.pid) - cpu0
        sys_share = cpu_times(engine.pid)[1] / max(cpu_seconds(engine.pid), 1e-9)
        redis_cpu = cpu_seconds(server.process.pid) - redis_cpu0
        listener.cancel()
        trades = await redis.xlen(keys.events_stream(spec.symbol))
        engine.terminate()
        engine.wait(20)
        await redis.aclose()
    print(f"orders={orders} concurrency={concurrency} elapsed={elapsed:.2f}s "
          f"orders/s={orders / elapsed:,.0f} p50={percentile(latencies, 0.5) * 1000:.2f}ms "
          f"p99={percentile(latencies, 0.99) * 1000:.2f}ms settled_batches={trades} "
          f"engine_cpu_per_order={cpu / orders * 1e6:.1f}us (system {sys_share:.0%} of the process) "
          f"redis_cpu_per_order={redis_cpu / orders * 1e6:.1f}us (incl. the producers' enqueues)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--drain", action="store_true", help="queue everything first, then time the engine")
    parser.add_argument("--appendfsync", choices=["none", "everysec", "always"], default="none",
                        help="Redis AOF: none (no AOF, the default), everysec or always")
    args = parser.parse_args()
    print(f"command: .venv/bin/python bench/bench_order_path.py --orders {args.orders} "
          f"--concurrency {args.concurrency}{' --drain' if args.drain else ''} --appendfsync {args.appendfsync}")
    asyncio.run(run(args.orders, args.concurrency, args.drain, args.appendfsync))


if __name__ == "__main__":
    main()
