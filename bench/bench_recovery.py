"""Engine recovery time and the cost of snapshots, with a real engine process and Redis.

    .venv/bin/python bench/bench_recovery.py [--commands 1000000] [--tail 10000]
        [--throughput-orders 200000] [--pause-book 500000]

1. Queues `--commands` SOL/USDC limit orders (bench_order_path's mix, every order above the
   minimum notional: about half trade),
   locking their funds the way the enqueue script does (summed per user, then one XADD per
   order, pipelined), and lets one engine settle them all with snapshots off: orders/s.
2. kill -9, then a restart with no snapshot: the whole stream is replayed (nothing settled
   again). Time = process start -> /readyz 200, and the engine's own recovery_ms.
3. SIGTERM (writes a snapshot), `--tail` more orders settled without snapshot, kill -9,
   restart: snapshot + a replay of the tail.
4. Throughput with and without snapshots: a running engine on a fresh Redis gets
   `--throughput-orders` appended (faster than it drains them) with snapshots off, then
   every 20,000 commands, then every 1 s; the engine's logged snapshot pauses (the capture
   between batches) are summarised. (In 1-3 the engine settles while recovering, where no
   snapshot is taken.)
5. The pause itself on a synthetic book of `--pause-book` resting orders: the previous
   write_snapshot (capture + serialise twice + checksum, inline, GC on) against the current
   one (capture with GC paused inline; serialise + checksum in a worker thread).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptex_common import keys  # noqa: E402
from cryptex_common.ledger import Ledger  # noqa: E402
from cryptex_common.markets import load_markets_yaml  # noqa: E402
from cryptex_common.messages import OrderType, PlaceOrderCommand, Side  # noqa: E402
from cryptex_common.registry import register_market  # noqa: E402
from cryptex_engine.snapshots import encode_snapshot, gc_paused  # noqa: E402
from tests.support.servers import free_port, redis_server, wait_for_port  # noqa: E402

SPEC = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC")
RULES = SPEC.rules()
CHANNEL = keys.reply_channel("bench")


def make_order(i: int, rng: random.Random) -> tuple[str, str, int, str]:
    """bench_order_path's mix (limits 150.00 +- 0.20 USDC, buys by user 1, sells by user 2,
    about half cross), with quantities above the 1 USDC minimum notional."""
    side = Side.BUY if i % 2 else Side.SELL
    user = "1" if side == Side.BUY else "2"
    price = 15_000 + rng.randint(-20, 20)
    qty = rng.randint(10, 50)
    lock = RULES.notional_units(price, qty) if side == Side.BUY else RULES.base_units(qty)
    cmd = PlaceOrderCommand(userId=user, side=side, orderType=OrderType.LIMIT, priceTicks=price,
                            quantityLots=qty, lockedUnits=lock, replyTo=CHANNEL, requestId=f"r{i}")
    return user, ("USDC" if side == Side.BUY else "SOL"), lock, cmd.model_dump_json(by_alias=True)


async def queue_orders(redis: aioredis.Redis, start: int, count: int) -> None:
    """What enqueue_order.lua does for each order (lock, id, XADD), in bulk: the funds of
    all of them are locked first, then the orders are appended (pipelined)."""
    rng = random.Random(start)
    locks: dict[tuple[str, str], int] = {}
    orders = [make_order(i, rng) for i in range(start, start + count)]
    for user, asset, lock, _ in orders:
        locks[(user, asset)] = locks.get((user, asset), 0) + lock
    for (user, asset), units in locks.items():
        # amounts are decimal strings changed by read-compute-write (no HINCRBY: decision 0009)
        available, locked = await redis.hmget(keys.balance_key(user), [keys.available_field(asset),
                                                                        keys.locked_field(asset)])
        await redis.hset(keys.balance_key(user), mapping={
            keys.available_field(asset): str(int(available or 0) - units),
            keys.locked_field(asset): str(int(locked or 0) + units)})
    pipe = redis.pipeline(transaction=False)
    for i, (_user, _asset, _lock, cmd) in zip(range(start, start + count), orders, strict=True):
        locks[(user, asset)] = locks.get((user, asset), 0) + lock
        pipe.xadd(keys.commands_stream(SPEC.symbol), {"id": str(i + 1_000_000_000), "c": cmd})
        if len(pipe) >= 5000:
            await pipe.execute()
    await pipe.execute()


class Engine:
    def __init__(self, url: str, log_path: str, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        full = {**os.environ, "CRYPTEX_REDIS_URL": url, "CRYPTEX_OPS_PORT": str(self.port),
                "CRYPTEX_LOG_LEVEL": "INFO", "CRYPTEX_TRIM_EVERY_S": "0", **env}
        self.started = time.perf_counter()
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cryptex_engine", "--market", SPEC.symbol],
                                         env=full, stdout=out, stderr=subprocess.STDOUT)

    async def ready_after(self) -> float:
        import aiohttp

        wait_for_port(self.port, 60)
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
                await asyncio.sleep(0.02)

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def term(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def wait_settled(redis: aioredis.Redis, target: int) -> None:
    while int(await redis.get(keys.settled_seq_key(SPEC.symbol)) or 0) < target:
        await asyncio.sleep(0.05)


async def fresh_market(redis: aioredis.Redis) -> None:
    await register_market(redis, SPEC)  # its Configure command is seq 1
    ledger = Ledger(redis)
    for user in ("1", "2"):
        for asset in ("SOL", "USDC"):
            await ledger.move_funds(kind="deposit", user_id=user, asset=asset, units=10**17,
                                    tx_id=f"{user}{asset}", record={})


def last_recovery(log: str) -> tuple[int, int]:
    m = re.findall(r'"msg":"recovered".*?"replayed":(\d+).*?"recovery_ms":(\d+)', log)
    return (int(m[-1][0]), int(m[-1][1])) if m else (-1, -1)


async def recovery(commands: int, tail: int, logdir: str) -> None:
    with redis_server() as server:
        redis = aioredis.Redis.from_url(server.url)
        await fresh_market(redis)
        t0 = time.perf_counter()
        await queue_orders(redis, 0, commands)
        print(f"queued {commands:,} commands in {time.perf_counter() - t0:.1f}s; "
              f"stream {await redis.xlen(keys.commands_stream(SPEC.symbol)):,} entries")
        log = f"{logdir}/recovery.log"
        off = {"CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "0", "CRYPTEX_SNAPSHOT_EVERY_S": "0"}
        eng = Engine(server.url, log, **off)
        await wait_settled(redis, commands + 1)
        took = time.perf_counter() - eng.started
        print(f"settle {commands:,} orders, no snapshots: {took:.1f}s = {commands / took:,.0f} orders/s")
        eng.kill()
        await redis.delete(keys.engine_lease_key(SPEC.symbol))  # as if its TTL had run out

        eng = Engine(server.url, log, **off)
        ready = await eng.ready_after()
        replayed, ms = last_recovery(eng.log())
        print(f"RECOVERY without snapshot: ready after {ready:.2f}s (replayed {replayed:,} commands, "
              f"recovery_ms {ms})")
        eng.term()  # graceful stop: writes a snapshot of the final state
        size = len(await redis.get(keys.snapshot_key(SPEC.symbol)) or b"")
        await queue_orders(redis, commands, tail)
        eng = Engine(server.url, log, **off)
        await wait_settled(redis, commands + tail + 1)
        eng.kill()
        await redis.delete(keys.engine_lease_key(SPEC.symbol))
        eng = Engine(server.url, log, **off)
        ready = await eng.ready_after()
        replayed, ms = last_recovery(eng.log())
        load = re.findall(r'"msg":"snapshot loaded".*?"load_ms":(\d+)', eng.log())
        print(f"RECOVERY with a snapshot {tail:,} commands old ({size / 1e6:.1f} MB, "
              f"{commands + 1:,} commands in): ready after {ready:.2f}s (snapshot load {load[-1] if load else '?'} ms, "
              f"replayed {replayed:,}, recovery_ms {ms})")
        eng.term()
        await redis.aclose()


async def throughput(orders: int, logdir: str) -> None:
    """Live: the engine is running and ready, then the orders are appended (faster than it
    drains them); time from the first append to the last settle."""
    runs = [("no snapshots", {"CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "0", "CRYPTEX_SNAPSHOT_EVERY_S": "0"}),
            ("snapshot every 20,000 commands", {"CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "20000",
                                                "CRYPTEX_SNAPSHOT_EVERY_S": "0"}),
            ("snapshot every 1 s", {"CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "0", "CRYPTEX_SNAPSHOT_EVERY_S": "1"})]
    for n, (label, env) in enumerate(runs):
        with redis_server() as server:
            redis = aioredis.Redis.from_url(server.url)
            await fresh_market(redis)
            eng = Engine(server.url, f"{logdir}/throughput-{n}.log", **env)
            await eng.ready_after()
            started = time.perf_counter()
            await queue_orders(redis, 0, orders)
            await wait_settled(redis, orders + 1)
            took = time.perf_counter() - started
            eng.kill()
            pauses = [float(p) for p in re.findall(r'"msg":"snapshot written".*?"pause_ms":([\d.]+)', eng.log())]
            sizes = [int(b) for b in re.findall(r'"msg":"snapshot written".*?"bytes":(\d+)', eng.log())]
            extra = (f"; {len(pauses)} snapshots, capture pause max {max(pauses):.1f} ms, "
                     f"largest {max(sizes) / 1e6:.2f} MB") if pauses else ""
            print(f"THROUGHPUT {label}: {orders:,} orders in {took:.1f}s = {orders / took:,.0f} orders/s{extra}")
            await redis.aclose()


def pause_on_big_book(n: int) -> None:
    from cryptex_engine.domain.matching import MatchingEngine

    sys.path.insert(0, str(ROOT))
    from tests.engine.helpers import BUY, SELL, limit, open_engine  # the engine tests' builders

    eng: MatchingEngine = open_engine()
    for i in range(n):
        side = BUY if i % 2 else SELL
        price = 1000 - (i % 500) - 1 if side == BUY else 1000 + (i % 500) + 1
        eng.apply(limit(i + 1, f"u{i % 100}", side, price, 5), 0)
    meta = {str(i + 1): ["limit", "GTC", False, 1000, 5, None, None, 0] for i in range(n)}
    for _ in range(2):
        t0 = time.perf_counter()
        state = {"core": eng.snapshot(), "meta": {k: list(v) for k, v in meta.items()}, "ticker": {}}
        body = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
        doc = {"version": 1, "checksum": hashlib.sha256(body).hexdigest(), "state": state}
        orjson.dumps(doc)
        old = time.perf_counter() - t0
        del state, doc, body
        t0 = time.perf_counter()
        with gc_paused():
            state = {"core": eng.snapshot(), "meta": {k: list(v) for k, v in meta.items()}, "ticker": {}}
            capture = time.perf_counter() - t0
            raw = encode_snapshot(state, eng.seq)
            encode = time.perf_counter() - t0 - capture
            del state
    print(f"PAUSE book of {n:,} resting orders ({len(raw) / 1e6:.1f} MB): previous write_snapshot held the "
          f"loop {old * 1000:.0f} ms (+ the SET awaited inline); now capture {capture * 1000:.0f} ms inline, "
          f"serialise+checksum {encode * 1000:.0f} ms in a worker thread (orjson keeps the GIL, so at most "
          f"this much more), SET in the background")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=10_000)
    parser.add_argument("--throughput-orders", type=int, default=200_000)
    parser.add_argument("--pause-book", type=int, default=500_000)
    args = parser.parse_args()
    print(f"command: .venv/bin/python bench/bench_recovery.py --commands {args.commands} --tail {args.tail} "
          f"--throughput-orders {args.throughput_orders} --pause-book {args.pause_book}")
    print(f"load average at start: {os.getloadavg()}")
    logdir = tempfile.mkdtemp(prefix="cryptex-bench-recovery-")
    pause_on_big_book(args.pause_book)
    await recovery(args.commands, args.tail, logdir)
    await throughput(args.throughput_orders, logdir)
    print(f"engine logs in {logdir}; load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
