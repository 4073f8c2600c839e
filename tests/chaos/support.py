"""Helpers for the crash-safety tests: stacks on a dedicated Redis, a random order flow
through the API, the engine's /state, replay, and the invariant checks of issue 5."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys, redis_client
from cryptex_common.ledger import Ledger
from cryptex_common.markets import MarketSpec, load_markets_yaml, market_tag
from cryptex_common.registry import register_market
from cryptex_engine.decode import read_entry
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_launcher.stack import Stack, free_port, wait_for_port
from tests.support.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "chaos-admin-token"
SOL, BTC = "SOL/USDC", "BTC/USDC"
# Fast snapshots (so restarts really load them), short leases (so a restarted engine takes
# over quickly), no trimming (replay from an empty state needs the whole stream).
ENGINE_ENV = {
    "CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "150",
    "CRYPTEX_SNAPSHOT_EVERY_S": "1",
    "CRYPTEX_LEASE_TTL_MS": "1500",
    "CRYPTEX_TRIM_EVERY_S": "0",
    "CRYPTEX_REPLY_TIMEOUT_MS": "1500",
    "CRYPTEX_RATE_LIMIT_PER_S": "2000",
    "CRYPTEX_RATE_LIMIT_BURST": "4000",
    "CRYPTEX_LOG_LEVEL": "INFO",
}


def specs() -> list[MarketSpec]:
    return load_markets_yaml((ROOT / "markets.yaml").read_text())


def make_stack(redis_url: str, database_url: str = "postgresql://127.0.0.1:1/none",
               env: dict[str, str] | None = None, **kw: Any) -> Stack:
    state = Path(tempfile.mkdtemp(prefix="cryptex-chaos-"))
    options: dict[str, Any] = {"with_wsgateway": False, "with_dbproc": False}
    options.update(kw)
    return Stack(redis_url=redis_url, database_url=database_url, markets=specs(), state_dir=state,
                 admin_token=ADMIN, api_port=free_port(), ws_port=free_port(),
                 extra_env={**ENGINE_ENV, "CRYPTEX_HISTORY_ENABLED": "false", **(env or {})},
                 **options)


async def register_all(redis_url: str) -> None:
    redis = redis_client.connect(redis_url, "tests")
    try:
        for spec in specs():
            await register_market(redis, spec)
    finally:
        await redis.aclose()


def engine_name(symbol: str) -> str:
    return f"engine-{market_tag(symbol)}"


async def http_json(url: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, s.get(url) as r:
        return r.status, await r.json(content_type=None)


async def engine_state(port: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """GET /state, waiting while the engine is not ready (starting, recovering)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, body = await http_json(f"http://127.0.0.1:{port}/state")
            if status == 200:
                return dict(body)
            last = (status, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise TimeoutError(f"engine /state on {port} not ready: {last}")


async def wait_engine_caught_up(redis_url: str, symbol: str, port: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """/state once every outbox is relayed (an order the API locked but did not hand over
    is queued by the engines' reconciler) and the engine has processed and settled the
    last entry of its stream."""
    redis = redis_client.connect(redis_url, "tests", decode=True)
    try:
        deadline = time.monotonic() + timeout_s
        try:
            await eventually(lambda: outboxes_empty(redis), timeout_s, interval_s=0.2, what="outboxes relayed")
        except AssertionError as exc:
            raise TimeoutError(str(exc)) from None
        while True:
            last = await redis.xrevrange(keys.commands_stream(symbol), count=1)
            st = await engine_state(port, timeout_s=max(1.0, deadline - time.monotonic()))
            if (not last or st["lastStreamId"] == last[0][0]) and st["seq"] == st["settledSeq"]:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"engine {symbol} not caught up: {st} vs {last}")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


def replay_cli(redis_url: str, symbol: str, upto_seq: int | None = None, *extra: str) -> dict[str, str]:
    """`cryptex replay` as a real command; its printed `key value` pairs."""
    argv = [sys.executable, "-m", "cryptex_launcher", "replay", "--market", symbol, *extra]
    if upto_seq is not None:
        argv += ["--upto-seq", str(upto_seq)]
    out = subprocess.run(argv, env={"CRYPTEX_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return dict(zip(out[::2], out[1::2], strict=False))


def engine_proc(url: str, symbol: str, port: int, log_path: str, **env: str) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEX_")}
    full.update({**ENGINE_ENV, "CRYPTEX_REDIS_URL": url, "CRYPTEX_OPS_PORT": str(port),
                 "CRYPTEX_INSTANCE_ID": f"engine-{port}", **env})
    out = open(log_path, "ab")  # noqa: SIM115
    try:
        return subprocess.Popen([sys.executable, "-m", "cryptex_engine", "--market", symbol], env=full,
                                stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def wait_port_free_or_listening(port: int, timeout_s: float = 30.0) -> None:
    wait_for_port(port, timeout_s)


# --- the random flow ------------------------------------------------------------------
@dataclass
class FlowLog:
    """What the API answered: order ids it gave (200/202), and other outcomes by kind."""

    accepted: list[tuple[str, str]] = field(default_factory=list)  # (market, orderId)
    replied: list[tuple[float, str]] = field(default_factory=list)  # (time, market): the engine answered (200)
    outcomes: Counter[str] = field(default_factory=Counter)
    deposits: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # asset -> units
    withdrawals: dict[str, int] = field(default_factory=lambda: defaultdict(int))


PRICES = {SOL: (Decimal("100.00"), Decimal("0.01")), BTC: (Decimal("30000.0"), Decimal("0.1"))}
QTYS = {SOL: (Decimal("0.001"), 100, 2000), BTC: (Decimal("0.00001"), 100, 3000)}


def random_order(rng: random.Random, market: str) -> dict[str, Any]:
    mid, tick = PRICES[market]
    lot, lo, hi = QTYS[market]
    side = rng.choice(["buy", "sell"])
    qty = str(lot * rng.randint(lo, hi))
    roll = rng.random()
    if roll < 0.1:
        return {"side": side, "type": "market", "quantity": qty, "market": market}
    price = str(mid + tick * rng.randint(-30, 30))
    order: dict[str, Any] = {"side": side, "type": "limit", "price": price, "quantity": qty, "market": market}
    if roll < 0.2:
        order["timeInForce"] = rng.choice(["IOC", "FOK"])
    elif roll < 0.25:
        order["postOnly"] = True
    return order


async def trader(client: CryptexClient, rng: random.Random, stop: asyncio.Event, log: FlowLog,
                 pace_s: float = 0.05, markets: tuple[str, ...] = (SOL, BTC)) -> None:
    """Place, cancel and cancel-all at random until `stop`; tolerate a dead API."""
    mine: list[str] = []
    while not stop.is_set():
        try:
            roll = rng.random()
            if roll < 0.75 or not mine:
                market = rng.choice(markets)
                r = await client.place_order(**random_order(rng, market))
                oid = None
                if r.status == 200 and isinstance(r.body, dict) and "order" in r.body:
                    oid = r.body["order"]["orderId"]
                    log.replied.append((time.time(), market))
                elif r.status == 202:
                    oid = r.body["orderId"]
                if oid is not None:
                    log.accepted.append((market, oid))
                    mine.append(oid)
                log.outcomes[f"place {r.status}"] += 1
            elif roll < 0.97:
                oid = mine.pop(rng.randrange(len(mine)))
                r = await client.cancel_order(oid)
                log.outcomes[f"cancel {r.status}"] += 1
            else:
                r = await client.cancel_all(rng.choice(markets))
                log.outcomes[f"cancel_all {r.status}"] += 1
                mine.clear()
        except (aiohttp.ClientError, TimeoutError):
            log.outcomes["connection error"] += 1
            await asyncio.sleep(0.2)
        await asyncio.sleep(rng.uniform(0, pace_s * 2))


FUNDS = {"USDC": "5000000", "SOL": "50000", "BTC": "500"}
DECIMALS = {"USDC": 6, "SOL": 9, "BTC": 8}


async def funded_users(admin: CryptexClient, n: int, log: FlowLog) -> list[CryptexClient]:
    users = []
    prefix = uuid.uuid4().hex[:8]
    for _ in range(n):
        users.append(await admin.new_funded_user(FUNDS, tx_prefix=prefix))
        for asset, amount in FUNDS.items():
            log.deposits[asset] += int(Decimal(amount).scaleb(DECIMALS[asset]))
    return users


# --- checks ---------------------------------------------------------------------------
async def stream_entries(redis: aioredis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    last = "-"
    while True:
        batch = await redis.xrange(stream, min=last, count=5000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return out
        out.extend(batch)
        last = batch[-1][0]


@dataclass
class Rebuilt:
    core: MatchingEngine
    place_ids: list[int]
    fills: list[tuple[int, int, int]]  # (trade id, price ticks, quantity lots)


async def rebuild(redis: aioredis.Redis, spec: MarketSpec) -> Rebuilt:
    """The market from its command stream alone, keeping what the checks need."""
    core = MatchingEngine.empty(spec.rules(), keys.FEE_ACCOUNT)
    place_ids: list[int] = []
    fills: list[tuple[int, int, int]] = []
    for stream_id, fields in await stream_entries(redis, keys.commands_stream(spec.symbol)):
        decoded, error = read_entry(stream_id, fields, spec)
        assert decoded is not None and error is None, (stream_id, error)
        if decoded.kind == "place":
            place_ids.append(int(decoded.order_id))  # type: ignore[arg-type]
        result = core.apply(decoded.command, decoded.ts_ms)
        fills += [(f.trade_id, f.price_ticks, f.quantity_lots) for f in result.fills]
    return Rebuilt(core, place_ids, fills)


async def event_batches(redis: aioredis.Redis, symbol: str) -> list[dict[str, Any]]:
    return [orjson.loads(f["b"]) for _, f in await stream_entries(redis, keys.events_stream(symbol))]


def trades_of(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["trade"] for b in batches for e in b["events"] if e["type"] == "trade"]


async def outboxes_empty(redis: aioredis.Redis) -> bool:
    for tag in keys.ledger_tags():
        if await redis.xlen(keys.outbox_stream(tag)):
            return False
    return True


async def balances_all(redis: aioredis.Redis) -> dict[str, dict[str, dict[str, int]]]:
    ledger = Ledger(redis)
    out = {}
    async for key in redis.scan_iter(match=keys.balance_pattern(), count=1000):
        user = (key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[1]
        out[user] = await ledger.balances(user)
    return out


async def withdraw_until_answered(admin: CryptexClient, user_id: str, asset: str, amount: str,
                                  tx_id: str, log: FlowLog, stop_after_s: float = 30.0) -> bool:
    """Retry with the same txId until the API answers: idempotent, so counted once."""
    deadline = time.monotonic() + stop_after_s
    while time.monotonic() < deadline:
        try:
            r = await admin.withdraw(user_id, asset, amount, tx_id)
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        if r.status == 200:
            log.withdrawals[asset] += int(Decimal(amount).scaleb(DECIMALS[asset]))
            log.outcomes["withdraw 200" + (" duplicate" if r.body.get("duplicate") else "")] += 1
            return True
        log.outcomes[f"withdraw {r.status}"] += 1
        if r.status < 500:
            return False
        await asyncio.sleep(0.2)
    raise AssertionError(f"withdrawal {tx_id} never answered")


async def check_ledger(redis_url: str, log: FlowLog, users: list[CryptexClient],
                       withdrawn: dict[tuple[str, str], int]) -> dict[str, Any]:
    """Checks (1)-(3) of issue 5 against Redis and the command/event streams. Returns
    figures for the test's report."""
    redis = redis_client.connect(redis_url, "tests", decode=True)
    figures: dict[str, Any] = {}
    try:
        expected: dict[tuple[str, str], int] = defaultdict(int)
        for u in users:
            for asset, amount in FUNDS.items():
                expected[(u.user_id, asset)] += int(Decimal(amount).scaleb(DECIMALS[asset]))  # type: ignore[attr-defined]
        for (user, asset), units in withdrawn.items():
            expected[(user, asset)] -= units
        locked_expected: dict[tuple[str, str], int] = defaultdict(int)
        accepted_by_market: dict[str, list[int]] = defaultdict(list)
        for market, answered_id in log.accepted:
            accepted_by_market[market].append(int(answered_id))
        # (1) every answered order id is on its market's stream exactly once and has a record
        all_ids = [order_id for _, order_id in log.accepted]
        assert len(all_ids) == len(set(all_ids)), "the API gave the same order id twice"
        for spec in specs():
            rebuilt = await rebuild(redis, spec)
            counts = Counter(rebuilt.place_ids)
            twice = [o for o, c in counts.items() if c > 1]
            assert not twice, f"{spec.symbol}: orders queued twice: {twice[:10]}"
            missing = [o for o in accepted_by_market[spec.symbol] if o not in counts]
            assert not missing, f"{spec.symbol}: answered orders not on the stream: {missing[:10]}"
            open_in_book = {o.order_id for o in rebuilt.core.book.orders.values()}
            for oid in accepted_by_market[spec.symbol]:
                raw = await redis.hget(keys.order_key(oid), "r")
                assert raw, f"order {oid} answered by the API has no record"
                rec = orjson.loads(raw)
                is_open = rec["status"] in ("new", "partially_filled")
                assert is_open == (oid in open_in_book), f"order {oid}: record {rec['status']} vs book"
            # (2) trades: the events stream holds exactly the replayed fills, each once
            batches = await event_batches(redis, spec.symbol)
            seqs = [(b["firstSeq"], b["lastSeq"]) for b in batches]
            for (_, last), (first, _) in itertools.pairwise(seqs):
                assert first == last + 1, f"{spec.symbol}: settled batches overlap or gap: {last} -> {first}"
            trades = trades_of(batches)
            ids = [t["tradeId"] for t in trades]
            assert len(ids) == len(set(ids)), f"{spec.symbol}: a trade id appears twice"
            assert [(t["tradeId"], t["priceTicks"], t["quantityLots"]) for t in trades] == rebuilt.fills, \
                f"{spec.symbol}: settled trades differ from the replayed fills"
            rules = spec.rules()
            base, quote = spec.base_asset, spec.quote_asset
            for t in trades:
                base_units = rules.base_units(t["quantityLots"])
                expected[(t["buyUserId"], base)] += base_units - t["buyerFeeUnits"]
                expected[(t["buyUserId"], quote)] -= t["quoteUnits"]
                expected[(t["sellUserId"], base)] -= base_units
                expected[(t["sellUserId"], quote)] += t["quoteUnits"] - t["sellerFeeUnits"]
                expected[(keys.FEE_ACCOUNT, base)] += t["buyerFeeUnits"]
                expected[(keys.FEE_ACCOUNT, quote)] += t["sellerFeeUnits"]
            for o in rebuilt.core.book.orders.values():
                locked_expected[(o.user_id, quote if o.is_buy else base)] += o.locked_remaining
            figures[spec.symbol] = {"commands": rebuilt.core.seq, "trades": len(trades),
                                    "open": len(open_in_book), "answered": len(accepted_by_market[spec.symbol])}
        # (2) no fill applied twice: every balance = deposits - withdrawals + its trades
        actual = await balances_all(redis)
        for (user, asset), units in expected.items():
            row = actual.get(user, {}).get(asset, {"available": 0, "locked": 0})
            assert row["available"] + row["locked"] == units, \
                f"user {user} {asset}: holds {row}, trades say {units}"
            assert row["locked"] == locked_expected.get((user, asset), 0), \
                f"user {user} {asset}: locked {row['locked']} != open orders' {locked_expected.get((user, asset), 0)}"
        # (3) conservation, exactly, from the ledger's own totals
        report = await Ledger(redis).conservation_report()
        for asset, row in report.items():
            assert row["held"] + row["inFlight"] == row["deposits"] - row["withdrawals"], \
                f"{asset} not conserved: {row}"
            assert row["inFlight"] == 0, f"{asset}: a journaled batch was never applied: {row}"
            assert row["deposits"] >= log.deposits[asset] and row["withdrawals"] == log.withdrawals[asset], \
                (asset, row, log.deposits[asset], log.withdrawals[asset])
        figures["conservation"] = report
        return figures
    finally:
        await redis.aclose()
