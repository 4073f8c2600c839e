"""dbproc benchmark: sustained trades/s written (trades + fills + orders + 7 candle
intervals) by one `python -m cryptex_dbproc` process, and trade -> candle lag at a fixed rate.

Starts its own Redis and PostgreSQL (tests/support/servers.py; PostgreSQL with fsync=off as
in the tests), feeds `events:{SOL_USDC}` with real EventBatch entries (the engine's
contract: each trade comes with its two order updates), and reads the results back from
PostgreSQL.

    .venv/bin/python bench/bench_dbproc.py [--trades 200000] [--batch-trades 50]
        [--rate 5000] [--lag-seconds 20] [--cpu-rates 300 1000 3000] [--cpu-seconds 10]
        [--cpu-entry-trades 1] [--profile DIR] [--skip-throughput] [--skip-lag]

Throughput: the stream is filled first, then dbproc is started; rate = trades written
between the first and the last commit / elapsed. Lag: batches are XADDed at --rate
trades/s; lag of a batch = wall time when its last trade is in the 1m candle
(max(last_trade_id)) - wall time of its XADD (the poller samples every 10 ms).

CPU per order (issue 12): entries of --cpu-entry-trades trades (one engine batch each: a
taker order, its trade and the two order updates per trade) are XADDed at each rate for
--cpu-seconds; CPU time (utime + stime from /proc/<pid>/stat) of the dbproc process and of
its PostgreSQL backend (the server's client backends for the bench database, the bench's
own connection excluded) is divided by the trades written. "PG all" adds every other
PostgreSQL process (WAL writer, checkpointer, autovacuum). Rounds = dbproc's
cryptex_dbproc_batch_seconds_count from its ops port. With --profile, py-spy records each
rate's dbproc (needs `pip install py-spy`; collapsed stacks written to DIR/dbproc-<rate>.txt,
the input of any flame graph tool).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptex_common import keys  # noqa: E402
from cryptex_dbproc.migrate import migrate  # noqa: E402
from tests.dbproc.support import SOL, BatchGen, encode, register  # noqa: E402
from tests.support.servers import (  # noqa: E402
    free_port,
    start_postgres,
    start_redis,
    wait_for_port,
)


def spawn_dbproc(db_url: str, redis_url: str, log: Path,
                 ops_port: int = 0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CRYPTEX_DATABASE_URL": db_url, "CRYPTEX_REDIS_URL": redis_url,
           "CRYPTEX_LOG_LEVEL": "WARNING", "CRYPTEX_OPS_PORT": str(ops_port)}
    return subprocess.Popen([sys.executable, "-m", "cryptex_dbproc"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of one process, seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def postgres_cpu_s(pg_dir: str, database: str, exclude: set[int]) -> tuple[float, float]:
    """(client backends of `database` minus `exclude`, every PostgreSQL process), seconds."""
    postmaster = int(Path(pg_dir, "postmaster.pid").read_text().split()[0])
    backends, total = 0.0, cpu_s(postmaster)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != postmaster or pid in exclude:
            continue
        used = cpu_s(pid)
        total += used
        if cmdline.startswith(f"postgres: postgres {database} "):
            backends += used
    return backends, total


async def dbproc_rounds(ops_port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", ops_port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    for line in body.splitlines():
        if line.startswith("cryptex_dbproc_batch_seconds_count"):
            return int(float(line.split()[-1]))
    return 0


async def cpu(args: argparse.Namespace, redis: Redis, db_url: str, redis_url: str,
              log: Path, pg_dir: str) -> None:
    conn = await asyncpg.connect(db_url)
    own_backend = await conn.fetchval("SELECT pg_backend_pid()")
    stream = keys.events_stream(SOL.symbol)
    print(f"CPU per order: entries of {args.cpu_entry_trades} trade(s) (1 trade + 2 order "
          f"updates each), {args.cpu_seconds:g} s per rate")
    header = ("| trades/s asked | achieved | rounds/s | trades/round | dbproc CPU µs/trade "
              "| PG backend µs/trade | PG all µs/trade | dbproc+PG backend µs/trade |\n"
              "|---|---|---|---|---|---|---|---|")
    for rate in args.cpu_rates:
        await conn.execute("TRUNCATE trades, fills, orders, candles, stream_cursors")
        await redis.delete(stream)
        ops_port = free_port()
        proc = spawn_dbproc(db_url, redis_url, log, ops_port)
        spy: subprocess.Popen[bytes] | None = None
        try:
            wait_for_port(ops_port)
            await asyncio.sleep(1.0)  # started and blocking on the (new) stream
            if rate == args.cpu_rates[0]:  # idle cost: no events at all
                d0, (b0, _) = cpu_s(proc.pid), postgres_cpu_s(pg_dir, "bench", {own_backend})
                await asyncio.sleep(args.idle_seconds)
                d1, (b1, _) = cpu_s(proc.pid), postgres_cpu_s(pg_dir, "bench", {own_backend})
                print(f"idle ({args.idle_seconds:g} s, no events): dbproc "
                      f"{(d1 - d0) * 1000 / args.idle_seconds:.1f} ms CPU/s, PG backend "
                      f"{(b1 - b0) * 1000 / args.idle_seconds:.1f} ms CPU/s", flush=True)
            per_s = rate / args.cpu_entry_trades
            n_entries = int(per_s * args.cpu_seconds)
            gen = BatchGen(SOL, seed=3, start_ms=int(time.time() * 1000))
            payloads = [encode(gen.batch(args.cpu_entry_trades, step_ms=0))
                        for _ in range(n_entries)]
            if args.profile:
                out = Path(args.profile) / f"dbproc-{rate}.txt"  # collapsed stacks
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(proc.pid), "--output", str(out), "--rate", "200", "--nonblocking",
                     "--format", "raw", "--threads", "--gil"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            rounds0 = await dbproc_rounds(ops_port)
            d0 = cpu_s(proc.pid)
            b0, a0 = postgres_cpu_s(pg_dir, "bench", {own_backend})
            start = time.perf_counter()
            for i, payload in enumerate(payloads):
                delay = start + i / per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await redis.xadd(stream, {"b": payload})
            achieved = n_entries * args.cpu_entry_trades / (time.perf_counter() - start)
            while await seq_written(conn) < gen.seq:
                await asyncio.sleep(0.05)
            d1 = cpu_s(proc.pid)
            b1, a1 = postgres_cpu_s(pg_dir, "bench", {own_backend})
            rounds = await dbproc_rounds(ops_port) - rounds0
            elapsed = time.perf_counter() - start
            n = gen.trade_id
            assert await conn.fetchval("SELECT count(*) FROM trades") == n
            us = 1e6 / n
            if header:
                print(header)
                header = ""
            print(f"| {rate:,} | {achieved:,.0f} | {rounds / elapsed:,.0f} | {n / max(rounds, 1):.1f} "
                  f"| {(d1 - d0) * us:,.0f} | {(b1 - b0) * us:,.0f} | {(a1 - a0) * us:,.0f} "
                  f"| {(d1 - d0 + b1 - b0) * us:,.0f} |", flush=True)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            proc.terminate()
            proc.wait(30)
    await conn.close()


async def seq_written(conn: asyncpg.Connection) -> int:
    """The stream cursor's last seq: one row, cheap to poll (count(*) would load PG)."""
    try:
        return int(await conn.fetchval("SELECT coalesce(max(last_seq), 0) FROM stream_cursors"))
    except asyncpg.UndefinedTableError:
        return 0


async def throughput(args: argparse.Namespace, redis: Redis, db_url: str, redis_url: str,
                     log: Path) -> None:
    gen = BatchGen(SOL, seed=1)
    n_batches = args.trades // args.batch_trades
    print(f"filling the stream: {n_batches} entries x {args.batch_trades} trades ...",
          flush=True)
    stream = keys.events_stream(SOL.symbol)
    for start in range(0, n_batches, 500):
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(min(500, n_batches - start)):
                pipe.xadd(stream, {"b": encode(gen.batch(args.batch_trades))})
            await pipe.execute()
    total, last_seq = gen.trade_id, gen.seq
    seqs_per_trade = last_seq // total  # a trade and its two order updates
    conn = await asyncpg.connect(db_url)
    proc = spawn_dbproc(db_url, redis_url, log)
    try:
        samples: list[tuple[float, int]] = []
        while True:
            seq = await seq_written(conn)
            if seq > 0:
                samples.append((time.perf_counter(), seq // seqs_per_trade))
            if seq >= last_seq:
                break
            if proc.poll() is not None:
                raise SystemExit(f"dbproc exited with {proc.returncode}; see {log}")
            await asyncio.sleep(0.1)
        if len(samples) < 2 or samples[-1][0] == samples[0][0]:
            raise SystemExit("too few trades to measure a rate: raise --trades")
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        assert await conn.fetchval("SELECT count(*) FROM trades") == total
        rate = (n1 - n0) / (t1 - t0)
        candles = await conn.fetchval("SELECT count(*) FROM candles")
        fills = await conn.fetchval("SELECT count(*) FROM fills")
        orders = await conn.fetchval("SELECT count(*) FROM orders")
        print(f"throughput: {n1 - n0} trades in {t1 - t0:.2f} s = {rate:,.0f} trades/s "
              f"(rows: {total} trades, {fills} fills, {orders} orders, {candles} candles)")
        print("load average (1, 5, 15 min) after the throughput phase: "
              + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    finally:
        await conn.close()
        proc.terminate()
        proc.wait(30)


async def lag(args: argparse.Namespace, redis: Redis, db_url: str, redis_url: str,
              log: Path) -> None:
    conn = await asyncpg.connect(db_url)
    await conn.execute("TRUNCATE trades, fills, orders, candles, stream_cursors")
    await redis.delete(keys.events_stream(SOL.symbol))
    proc = spawn_dbproc(db_url, redis_url, log)
    try:
        await asyncio.sleep(1.0)  # started and blocking on the (new) stream
        per_s = args.rate / args.batch_trades
        n_batches = int(per_s * args.lag_seconds)
        gen = BatchGen(SOL, seed=2, start_ms=int(time.time() * 1000))
        payloads = []
        for _ in range(n_batches):
            payloads.append((encode(gen.batch(args.batch_trades, step_ms=0)), gen.trade_id))
        sent: list[tuple[int, float]] = []  # (last trade id, wall time of XADD)
        seen: list[tuple[float, int]] = []  # (wall time, max last_trade_id in 1m candles)
        done = asyncio.Event()

        async def poll() -> None:
            while not done.is_set():
                v = await conn.fetchval(
                    "SELECT max(last_trade_id) FROM candles WHERE interval = '1m'")
                seen.append((time.perf_counter(), v or 0))
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())
        stream = keys.events_stream(SOL.symbol)
        start = time.perf_counter()
        for i, (payload, last_id) in enumerate(payloads):
            due = start + i / per_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await redis.xadd(stream, {"b": payload})
            sent.append((last_id, time.perf_counter()))
        achieved = len(payloads) * args.batch_trades / (time.perf_counter() - start)
        while not seen or seen[-1][1] < gen.trade_id:
            await asyncio.sleep(0.05)
        done.set()
        await poller
        lags_ms = []
        j = 0
        for last_id, t_sent in sent:
            while seen[j][1] < last_id:
                j += 1
            lags_ms.append((seen[j][0] - t_sent) * 1000)
        worst = max(range(len(lags_ms)), key=lags_ms.__getitem__)
        print(f"worst lag at batch {worst}/{len(lags_ms)}; over 200 ms: "
              f"{sum(v > 200 for v in lags_ms)} batches")
        lags_ms.sort()
        q = statistics.quantiles(lags_ms, n=100)
        print(f"lag at {args.rate} trades/s (achieved {achieved:,.0f}/s, {len(sent)} batches "
              f"of {args.batch_trades}): trade -> 1m candle p50 {q[49]:.0f} ms, "
              f"p99 {q[98]:.0f} ms, max {lags_ms[-1]:.0f} ms")
    finally:
        await conn.close()
        proc.terminate()
        proc.wait(30)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=200_000)
    parser.add_argument("--batch-trades", type=int, default=50)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--cpu-rates", type=int, nargs="*", default=[300, 1000, 3000])
    parser.add_argument("--cpu-seconds", type=float, default=10.0)
    parser.add_argument("--cpu-entry-trades", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--profile", help="directory for py-spy flame graphs of the CPU phase")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-lag", action="store_true")
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} cores; PostgreSQL fsync=off (tests/support/servers.py); "
          "load average at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    rs, pg = start_redis(), start_postgres()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dbproc-"))
    log = workdir / "dbproc.log"
    try:
        conn = await asyncpg.connect(pg.url)
        await conn.execute("CREATE DATABASE bench")
        await conn.close()
        db_url = pg.url_for("bench")
        conn = await asyncpg.connect(db_url)
        await migrate(conn)  # the lag and CPU phases may run without the throughput phase
        await conn.close()
        redis = Redis.from_url(rs.url)
        await register(redis, SOL)
        if not args.skip_throughput:
            await throughput(args, redis, db_url, rs.url, log)
        if not args.skip_lag:
            await lag(args, redis, db_url, rs.url, log)
        if args.cpu_rates:
            await cpu(args, redis, db_url, rs.url, log, pg.dir)
        await redis.aclose()
    finally:
        pg.stop()
        rs.stop()
    print(f"dbproc log: {log}")


if __name__ == "__main__":
    asyncio.run(main())
