"""Benchmark of the pure matching core (no I/O): throughput, per-command latency, memory.

    .venv/bin/python bench/bench_core.py                 # 1,000,000 commands + 1,000,000 resting
    .venv/bin/python bench/bench_core.py --commands 200000 --resting 0   # quicker

1. Generates a seeded, realistic mix of commands (resting limits near a drifting mid price,
   crossing limits, IOC/FOK, post-only, market orders by quantity and by quote budget,
   cancels of live and of already-gone orders, a few cancel-alls; 200 users), before timing.
2. Throughput: applies them all on a fresh engine, one timer around the whole loop; three
   runs, each on a fresh engine (this machine is shared, so the spread is printed too).
   The generated commands are moved out of the GC's reach (`gc.freeze()`): in the service
   commands arrive one at a time and die young, and a million live pre-built commands would
   otherwise make every full collection scan them (a benchmark artefact).
3. Latency: applies them again on a fresh engine, `perf_counter_ns` around every command
   (which adds ~100 ns each); prints p50/p90/p99/p99.9/max overall and per command kind.
4. Memory: a fresh engine fed `--resting` non-crossing limit orders, measured with
   tracemalloc (bytes held by the engine) plus the process peak RSS; then the time to take
   a snapshot and its state hash at that size.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("libs/common", "apps/engine"):
    sys.path.insert(0, str(ROOT / sub))

from cryptex_common.keys import FEE_ACCOUNT  # noqa: E402
from cryptex_common.markets import MarketRules, MarketState  # noqa: E402
from cryptex_common.messages import OrderType, Side, TimeInForce  # noqa: E402
from cryptex_engine.domain.commands import (  # noqa: E402
    CancelAll,
    CancelOrder,
    Configure,
    PlaceOrder,
)
from cryptex_engine.domain.matching import MatchingEngine  # noqa: E402

RULES = MarketRules(
    symbol="SOL/USDC",
    base_asset="SOL",
    quote_asset="USDC",
    base_units_per_lot=10_000_000,  # lot 0.01 SOL (9 decimals)
    quote_units_per_tick_lot=100,  # tick 0.01 USDC (6 decimals) * lot 0.01
    min_quantity_lots=1,
    max_quantity_lots=1_000_000,
    min_notional_units=0,
)
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
BUY, SELL = Side.BUY, Side.SELL


def generate(n: int, seed: int) -> tuple[list, list[str]]:
    """A seeded command mix. Returns (commands, kind of each command)."""
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(200)]
    mid = 15_000  # ticks: 150.00 USDC
    live: list[int] = []  # ids of resting-type orders, to pick cancels from
    commands: list = []
    kinds: list[str] = []
    next_id = 1

    def limit(side: Side, price: int, qty: int, tif: TimeInForce, post_only: bool) -> PlaceOrder:
        nonlocal next_id
        lock = RULES.notional_units(price, qty) if side is BUY else RULES.base_units(qty)
        cmd = PlaceOrder(next_id, rng.choice(users), side, LIMIT, tif, post_only, price, qty, None, None, lock)
        next_id += 1
        return cmd

    for i in range(n):
        if i % 100 == 0:
            mid += rng.choice((-2, -1, 0, 0, 1, 2))
        r = rng.random()
        side = BUY if rng.random() < 0.5 else SELL
        qty = rng.choice((1, 1, 2, 3, 5, 10, 20, 50))
        cmd: PlaceOrder | CancelOrder | CancelAll
        if r < 0.50:  # a maker order near the mid
            away = rng.randint(1, 25)
            price = mid - away if side is BUY else mid + away
            cmd = limit(side, price, qty, GTC, rng.random() < 0.2)
            live.append(cmd.order_id)
            kind = "place_rest"
        elif r < 0.62:  # a limit that crosses the mid by a few ticks
            through = rng.randint(0, 5)
            price = mid + through if side is BUY else mid - through
            tif = rng.choice((GTC, GTC, IOC, FOK))
            cmd = limit(side, price, qty, tif, False)
            if tif is GTC:
                live.append(cmd.order_id)
            kind = "place_cross"
        elif r < 0.67:  # market order
            budget = None
            if side is BUY and rng.random() < 0.4:
                budget = RULES.notional_units(mid, qty)
                m_qty = None
                lock = budget
            else:
                m_qty = qty
                lock = RULES.notional_units(mid + 100, qty) if side is BUY else RULES.base_units(qty)
            cmd = PlaceOrder(
                next_id,
                rng.choice(users),
                side,
                MARKET,
                IOC,
                False,
                None,
                m_qty,
                budget,
                None,
                lock,
            )
            next_id += 1
            kind = "market"
        elif r < 0.995:  # cancel: mostly of a live order, sometimes of one already gone
            if live and rng.random() < 0.9:
                victim = live.pop(rng.randrange(max(0, len(live) - 2000), len(live)))
            else:
                victim = rng.randrange(1, next_id)
            # The cancel comes from the right user only if we remember it; the engine
            # answers ORDER_NOT_FOUND otherwise, which is a realistic share too.
            cmd = CancelOrder(victim, rng.choice(users))
            kind = "cancel"
        else:
            cmd = CancelAll(rng.choice(users))
            kind = "cancel_all"
        commands.append(cmd)
        kinds.append(kind)
    return commands, kinds


def fix_cancel_owners(commands: list) -> None:
    """Give most cancels the owner of the order they name, so they really cancel."""
    owner = {}
    rng = random.Random(1)
    for cmd in commands:
        if type(cmd) is PlaceOrder:
            owner[cmd.order_id] = cmd.user_id
        elif type(cmd) is CancelOrder and cmd.order_id in owner and rng.random() < 0.95:
            cmd.user_id = owner[cmd.order_id]


def new_engine() -> MatchingEngine:
    eng = MatchingEngine(RULES, FEE_ACCOUNT)
    eng.apply(Configure(MarketState.OPEN, 10, 20), 0)
    return eng


def percentile(sorted_ns: list[int], p: float) -> int:
    return sorted_ns[min(len(sorted_ns) - 1, int(p / 100 * len(sorted_ns)))]


def throughput(commands: list) -> tuple[float, MatchingEngine, float]:
    eng = new_engine()
    apply = eng.apply
    gc.collect()
    start = time.perf_counter()
    for ts, cmd in enumerate(commands):
        apply(cmd, ts)
    elapsed = time.perf_counter() - start
    return len(commands) / elapsed, eng, elapsed


def latency(commands: list, kinds: list[str]) -> dict[str, list[int]]:
    eng = new_engine()
    apply = eng.apply
    clock = time.perf_counter_ns
    per_kind: dict[str, list[int]] = {}
    all_ns: list[int] = []
    gc.collect()
    for ts, cmd in enumerate(commands):
        t0 = clock()
        apply(cmd, ts)
        dt = clock() - t0
        all_ns.append(dt)
        per_kind.setdefault(kinds[ts], []).append(dt)
    per_kind["ALL"] = all_ns
    return per_kind


def memory(n_resting: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    gc.collect()
    tracemalloc.start()
    eng = new_engine()
    base_before, _ = tracemalloc.get_traced_memory()
    mid = 15_000
    for oid in range(1, n_resting + 1):
        side = BUY if oid % 2 else SELL
        away = rng.randint(1, 2000)
        price = mid - away if side is BUY else mid + away
        qty = rng.choice((1, 2, 5, 10))
        lock = RULES.notional_units(price, qty) if side is BUY else RULES.base_units(qty)
        eng.apply(
            PlaceOrder(oid, f"u{oid % 1000}", side, LIMIT, GTC, False, price, qty, None, None, lock),
            oid,
        )
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {
        "orders": eng.open_orders_count(),
        "levels": sum(eng.level_counts()),
        "engine_mib": (held - base_before) / 2**20,
        "bytes_per_order": (held - base_before) / max(1, eng.open_orders_count()),
        "peak_traced_mib": peak / 2**20,
    }
    t0 = time.perf_counter()
    snap = eng.snapshot()
    out["snapshot_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["snapshot_json_mib"] = len(json.dumps(snap, separators=(",", ":"))) / 2**20
    out["json_dumps_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng.state_hash()
    out["state_hash_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    MatchingEngine.restore(RULES, snap, FEE_ACCOUNT)
    out["restore_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--resting", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", type=int, default=3, help="throughput runs")
    args = parser.parse_args()
    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"python {sys.version.split()[0]}  seed={args.seed}")

    t0 = time.perf_counter()
    commands, kinds = generate(args.commands, args.seed)
    fix_cancel_owners(commands)
    mix = {k: kinds.count(k) for k in sorted(set(kinds))}
    print(f"generated {len(commands):,} commands in {time.perf_counter() - t0:.1f}s: {mix}")

    gc.collect()
    gc.freeze()
    rate, eng, _ = throughput(commands)
    rates = [rate]
    for _ in range(args.runs - 1):
        del eng  # let the previous engine go before the next run
        rate, eng, _ = throughput(commands)
        rates.append(rate)
    rates.sort()
    bids, asks = eng.level_counts()
    print(
        f"throughput: best {rates[-1]:,.0f} / median {rates[len(rates) // 2]:,.0f} / worst "
        f"{rates[0]:,.0f} commands/s over {len(rates)} runs of {len(commands):,} commands"
    )
    print(f"  end state: trades={eng.last_trade_id:,} resting={eng.open_orders_count():,} levels={bids}+{asks}")

    per_kind = latency(commands, kinds)
    print("latency per command (ns, perf_counter_ns around each apply):")
    print(f"  {'kind':<12}{'count':>10}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>9}{'max':>11}")
    for kind in sorted(per_kind, key=lambda k: (k != "ALL", k)):
        ns = sorted(per_kind[kind])
        print(
            f"  {kind:<12}{len(ns):>10,}{percentile(ns, 50):>8,}{percentile(ns, 90):>8,}"
            f"{percentile(ns, 99):>8,}{percentile(ns, 99.9):>9,}{ns[-1]:>11,}"
        )
    del commands, kinds, per_kind, eng
    gc.unfreeze()
    gc.collect()

    if args.resting:
        m = memory(args.resting, args.seed)
        print(
            f"memory: {m['orders']:,} resting orders on {m['levels']:,} levels hold "
            f"{m['engine_mib']:.0f} MiB (tracemalloc; {m['bytes_per_order']:.0f} B/order)"
        )
        print(
            f"  snapshot() {m['snapshot_s']:.2f}s, json {m['snapshot_json_mib']:.0f} MiB in "
            f"{m['json_dumps_s']:.2f}s, state_hash() {m['state_hash_s']:.2f}s, "
            f"restore() {m['restore_s']:.2f}s"
        )
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS: {maxrss_mib:.0f} MiB (includes the generated command lists)")


if __name__ == "__main__":
    main()
