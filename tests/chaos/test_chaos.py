"""The proof of issue 5. A steady random order flow from several users on SOL/USDC and
BTC/USDC goes through the API while a random process (an engine, the API, dbproc or the
WebSocket gateway) is killed with SIGKILL at random moments and restarted. Then the flow
stops and:
1. every order the API answered with an id (200 or 202) is on its stream once and has a
   record whose state matches the rebuilt book (open <=> resting); no id was given twice;
2. the settled batches are gap-free and never overlap; no trade id appears twice; the
   trades settled equal the fills of a replay of the command stream; every user's balance
   is exactly deposits - withdrawals + its trades (a fill applied twice would show), and
   every locked amount equals what the user's resting orders still lock;
3. for every asset: sum(available + locked) + fees = deposits - withdrawals, exactly;
4. each engine's /state hash equals `cryptex replay`'s for the same sequence;
5. dbproc's trades table equals the engine's trades (events:{M}) and its candles equal a
   recomputation from them.
Everything runs on a dedicated Redis with AOF and a fresh PostgreSQL database, then again on
a Redis Cluster of 3 primaries + 3 replicas with CRYPTEX_REDIS_WAIT_REPLICAS=1 (issue 16).
Seeded: CRYPTEX_CHAOS_SEED reproduces a run, CRYPTEX_CHAOS_SECONDS sets its length
(default 60).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections import Counter, defaultdict
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys, redis_client
from cryptex_common.candles import TradeTick, aggregate
from cryptex_engine.replay import replay_market
from cryptex_launcher.stack import wait_for_port
from tests.chaos.support import (
    ADMIN,
    BTC,
    DECIMALS,
    SOL,
    FlowLog,
    check_ledger,
    engine_name,
    event_batches,
    funded_users,
    make_stack,
    register_all,
    replay_cli,
    trader,
    trades_of,
    wait_engine_caught_up,
    withdraw_until_answered,
)
from tests.dbproc.support import candles_from_db
from tests.support.eventually import eventually
from tests.support.redis_cluster import redis_cluster
from tests.support.servers import PostgresServer, new_database, redis_server

SECONDS = float(os.environ.get("CRYPTEX_CHAOS_SECONDS", "60"))
VICTIMS = [engine_name(SOL), engine_name(BTC), "api", "dbproc", "wsgateway"]
TRADE_COLUMNS = ("market", "trade_id", "seq", "ts_ms", "price_ticks", "quantity_lots", "quote_units",
                 "taker_side", "buy_order_id", "sell_order_id", "buy_user_id", "sell_user_id",
                 "buyer_fee_units", "seller_fee_units")
TRADE_FIELDS = ("market", "tradeId", "seq", "tsMs", "priceTicks", "quantityLots", "quoteUnits",
                "takerSide", "buyOrderId", "sellOrderId", "buyUserId", "sellUserId",
                "buyerFeeUnits", "sellerFeeUnits")


async def wait_dbproc_drained(redis: aioredis.Redis, timeout_s: float = 60.0) -> None:
    async def drained() -> bool:
        for symbol in (SOL, BTC):
            groups = {g["name"]: g for g in await redis.xinfo_groups(keys.events_stream(symbol))}
            g = groups.get(keys.DBPROC_GROUP)
            if g is None or g["pending"] or g.get("lag"):
                return False
        return True

    await eventually(drained, timeout_s, interval_s=0.2, what="dbproc caught up")


@pytest.mark.parametrize("redis_mode", ["single", "cluster"])
async def test_kill_9_anything_under_load_loses_nothing_and_applies_nothing_twice(
    postgres: PostgresServer, redis_mode: str,
) -> None:
    seed = int(os.environ.get("CRYPTEX_CHAOS_SEED", str(int(time.time()))))
    print(f"chaos seed {seed} (CRYPTEX_CHAOS_SEED={seed} reproduces the schedule)")
    rng = random.Random(seed)
    db_url = await new_database(postgres)
    cluster = redis_mode == "cluster"
    with redis_cluster() if cluster else redis_server(appendonly=True) as server:
        await register_all(server.url)
        stack = make_stack(server.url, db_url, with_wsgateway=True, with_dbproc=True,
                           env={"CRYPTEX_REDIS_WAIT_REPLICAS": "1"} if cluster else None)
        stack.start_all()
        redis = redis_client.connect(server.url, "tests", decode=True)
        log = FlowLog()
        stop = asyncio.Event()
        kills: list[str] = []
        withdrawn: dict[tuple[str, str], int] = defaultdict(int)
        try:
            async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin:
                users = await funded_users(admin, 6, log)
                flow = [asyncio.create_task(trader(u, random.Random(seed + i), stop, log, pace_s=0.03))
                        for i, u in enumerate(users)]

                async def withdrawals() -> None:
                    n = 0
                    while not stop.is_set():
                        await asyncio.sleep(rng.uniform(1.0, 3.0))
                        user = rng.choice(users)
                        asset, amount = rng.choice([("USDC", "12.5"), ("SOL", "0.25"), ("BTC", "0.001")])
                        n += 1
                        if await withdraw_until_answered(admin, user.user_id, asset, amount,  # type: ignore[attr-defined]
                                                         f"chaos-{seed}-{n}", log):
                            withdrawn[(user.user_id, asset)] += int(Decimal(amount).scaleb(DECIMALS[asset]))  # type: ignore[attr-defined]

                money = asyncio.create_task(withdrawals())
                # every kind of process dies at least once, then at random
                schedule = rng.sample(VICTIMS, len(VICTIMS))
                deadline = time.monotonic() + SECONDS
                while time.monotonic() < deadline:
                    await asyncio.sleep(rng.uniform(1.0, 3.5))
                    victim = schedule.pop() if schedule else rng.choice(VICTIMS)
                    await asyncio.to_thread(stack.kill, victim)  # SIGKILL
                    kills.append(victim)
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
                    stack.start(victim)
                wait_for_port(stack.api_port)
                await asyncio.sleep(2.0)  # the flow goes on against the last restarted process
                stop.set()
                await asyncio.gather(*flow, money)
            print(f"kills: {Counter(kills)}; outcomes: {dict(log.outcomes)}")
            assert set(kills) == set(VICTIMS)
            assert len(log.accepted) > 300, log.outcomes

            # (4) each engine's hash equals replay's at the same sequence
            states = {}
            for symbol in (SOL, BTC):
                port = stack.services[engine_name(symbol)].ops_port
                states[symbol] = st = await wait_engine_caught_up(server.url, symbol, port)  # type: ignore[arg-type]
                rep = await replay_market(server.url, symbol, st["seq"])
                assert (rep["seq"], rep["stateHash"]) == (st["seq"], st["stateHash"]), (symbol, st, rep)
            cli = replay_cli(server.url, SOL, states[SOL]["seq"])
            assert cli["stateHash"] == states[SOL]["stateHash"]
            # restarted engines started from their snapshots (not only from the stream)
            assert any("snapshot loaded" in stack.log_text(engine_name(s)) for s in (SOL, BTC))

            # (1) (2) (3)
            figures = await check_ledger(server.url, log, users, withdrawn)
            print(f"figures: {figures}")

            # (5) dbproc's tables against the engine's trades
            await wait_dbproc_drained(redis)
            conn = await asyncpg.connect(db_url)
            try:
                rows = await conn.fetch(f"SELECT {', '.join(TRADE_COLUMNS)} FROM trades")
            finally:
                await conn.close()
            db_trades = sorted(tuple(int(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, int)
                                     else v for v in r.values()) for r in rows)
            engine_trades = []
            recomputed = {}
            for symbol in (SOL, BTC):
                trades = trades_of(await event_batches(redis, symbol))
                engine_trades += [tuple(t[f] if f != "market" else symbol for f in TRADE_FIELDS) for t in trades]
                recomputed.update(aggregate(symbol, [
                    TradeTick(t["tradeId"], t["tsMs"], t["priceTicks"], t["quantityLots"], t["quoteUnits"])
                    for t in trades]))
            assert db_trades == sorted(engine_trades)
            assert await candles_from_db(db_url) == recomputed
        finally:
            stop.set()
            codes = stack.stop_all()
            await redis.aclose()
            failed = {k: v for k, v in codes.items() if v != 0}
            if not failed:
                shutil.rmtree(stack.state_dir, ignore_errors=True)
        assert not failed, f"services did not stop cleanly: {failed} (logs in {stack.state_dir})"
