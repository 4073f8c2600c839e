"""Issue 16: the exchange on a real Redis Cluster (3 primaries, 3 replicas), and a kill -9
of a primary under a two-market flow.

The API, both engines and the relay run on the cluster with CRYPTEX_REDIS_WAIT_REPLICAS=1
(an answered order and every settle step are on a replica before anything depends on
them). Mid-flow the primary holding SOL/USDC's market slot is killed with SIGKILL; its
replica is promoted; services that exit are restarted, as a supervisor would; the killed
node comes back as a replica. Afterwards, exactly as the chaos test checks on one Redis:
every answered order is on its stream once with a matching record; settled batches never
overlap and no trade appears twice; every balance equals deposits - withdrawals + its
trades; conservation is exact per asset across every bucket and the fee shard, with
nothing left in flight; each engine's state hash equals the replay's. The figures printed:
time until orders flow again, and the reconciler's run time.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import pytest
import redis

from cryptex_client import CryptexClient
from cryptex_common import keys, redis_client
from cryptex_common.ledger import Ledger
from cryptex_common.resp_cluster import key_slot
from cryptex_engine.reconcile import reconcile_once
from cryptex_launcher.redis_cluster import LocalCluster
from tests.chaos.support import ADMIN, BTC, SOL, FlowLog, check_ledger, funded_users, make_stack, register_all
from tests.chaos.test_redis_restart import engines_caught_up, flow_for, supervise
from tests.support.redis_cluster import redis_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def primary_of(cluster: LocalCluster, key: str) -> int:
    """The port of the primary serving `key`'s slot."""
    slot = key_slot(key)
    for port in cluster.primary_ports():
        client = redis.Redis(port=port, socket_timeout=2)
        try:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        finally:
            client.close()
    raise AssertionError(f"no primary serves slot {slot}")


async def supervised(stack: Any, stop: asyncio.Event) -> None:
    while not stop.is_set():
        supervise(stack)
        await asyncio.sleep(0.5)


async def test_kill_9_a_primary_under_a_two_market_flow_loses_nothing() -> None:
    seed = int(time.time())
    print(f"seed {seed}")
    with redis_cluster() as cluster:
        url = cluster.url
        await register_all(url)
        stack = make_stack(url, env={"CRYPTEX_REDIS_WAIT_REPLICAS": "1", "CRYPTEX_REDIS_WAIT_TIMEOUT_MS": "100"})
        stack.start_all()
        log = FlowLog()
        answered_at: list[tuple[float, str]] = []
        stop_supervising = asyncio.Event()
        try:
            async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin:
                users = await funded_users(admin, 4, log)
                await flow_for(stack, 6.0, log, users, seed, answered_at)
                before_kill = len(log.accepted)
                assert before_kill > 50, log.outcomes
                victim = primary_of(cluster, keys.commands_stream(SOL))
                supervisor = asyncio.create_task(supervised(stack, stop_supervising))
                flow = asyncio.create_task(flow_for(stack, 20.0, log, users, seed + 100, answered_at))
                await asyncio.sleep(3.0)
                killed_at = time.time()
                cluster.kill(victim)
                await flow
                after = [t for t, _ in answered_at if t > killed_at]
                # SOL/USDC's stream lived on the killed primary: the first SOL order its engine
                # answered (200) after the kill
                resumed_s = min((t for t, m in log.replied if m == SOL and t > killed_at), default=float("inf")) \
                    - killed_at
                await asyncio.to_thread(cluster.restart, victim)  # it rejoins as a replica
                stop_supervising.set()
                await supervisor
            states = await engines_caught_up(stack, url)
            figures = await check_ledger(url, log, users, {})
            client = redis_client.connect(url, "tests", decode=True)
            try:
                started = time.perf_counter()
                repaired = await reconcile_once(client, Ledger(client), [SOL, BTC])
                reconcile_s = time.perf_counter() - started
            finally:
                await client.aclose()
            print(f"orders answered before the kill {before_kill}, in all {len(log.accepted)}; "
                  f"SOL/USDC orders answered by its engine again {resumed_s:.2f} s after kill -9 of its primary "
                  f"{victim}; "
                  f"reconciler pass {reconcile_s * 1000:.0f} ms ({repaired}); outcomes {dict(log.outcomes)}; "
                  f"states {states}; figures {figures}")
            assert len(after) > 20, f"orders did not flow again after the failover: {dict(log.outcomes)}"
            assert resumed_s < 15, f"SOL/USDC never took orders again: {dict(log.outcomes)}"
            # the engines did it all: nothing stuck in an outbox; the journal holds at most each
            # market's last batch (deleted by its next step A), applied already
            assert repaired.handed_over == 0 and repaired.journal_entries <= 2
        except BaseException:
            print(f"logs kept in {stack.state_dir}")
            stop_supervising.set()
            stack.stop_all()
            raise
        finally:
            stop_supervising.set()
        codes = stack.stop_all()
        shutil.rmtree(stack.state_dir, ignore_errors=True)
        assert not {k: v for k, v in codes.items() if v not in (0, None, -9)}, codes
        assert {SOL, BTC} <= set(states)
