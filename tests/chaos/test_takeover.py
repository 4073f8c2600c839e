"""Issue 11 defect 5: a takeover must not orphan commands.

An engine whose loop is blocked past its lease (a long GC pause, a SIGSTOP) may still read
from Redis once more after a new owner took over. With a consumer group, the entries that
stale read received stayed pending to a dead consumer: the new owner never saw them and the
orders stayed `new` with their funds locked. The engine now reads by its own position
(XREAD after its last stream id), so no read by anyone can hide an entry from the owner.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys
from cryptex_common.ledger import Ledger
from cryptex_engine.replay import replay_market
from cryptex_launcher.stack import free_port, wait_for_port
from tests.chaos.support import (
    ADMIN,
    SOL,
    FlowLog,
    engine_proc,
    engine_state,
    funded_users,
    make_stack,
    register_all,
    replay_cli,
    wait_engine_caught_up,
)
from tests.support.servers import redis_server

LEASE_MS = 1500


async def test_a_stale_engine_reading_once_more_hides_nothing_from_the_new_owner(tmp_path: Path) -> None:
    """issue 11 defect 5: the old engine is SIGSTOPped inside a long blocking read, the new
    one takes over after the lease lapses, orders arrive (Redis hands them to the still
    blocked old read first), then the old one resumes and stops without settling anything.
    The new owner settles every order (none stays `new` off the book with its funds locked),
    its state hash equals replay, and balances are conserved exactly."""
    with redis_server(appendonly=True) as server:
        await register_all(server.url)
        stack = make_stack(server.url)
        stack.plan()
        stack.start("api")
        wait_for_port(stack.api_port)
        p_old, p_new = free_port(), free_port()
        env = {"CRYPTEX_LEASE_TTL_MS": str(LEASE_MS), "CRYPTEX_SNAPSHOT_EVERY_S": "0",
               "CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "0"}
        # a 4 s blocking read: while it is stopped, Redis still serves that read
        old = engine_proc(server.url, SOL, p_old, str(tmp_path / "old.log"), CRYPTEX_BLOCK_MS="4000", **env)
        new = None
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            await engine_state(p_old)
            async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin:
                alice, bob = await funded_users(admin, 2, FlowLog())
                r = await alice.place_order(side="sell", type="limit", price="150", quantity="2", market=SOL)
                assert r.status == 200, r.body
                await wait_engine_caught_up(server.url, SOL, p_old)
                await asyncio.sleep(0.3)  # back inside its blocking read
                old.send_signal(signal.SIGSTOP)
                await asyncio.sleep(LEASE_MS / 1000 + 0.5)  # its lease lapses
                new = engine_proc(server.url, SOL, p_new, str(tmp_path / "new.log"), **env)
                await engine_state(p_new)
                assert int(await redis.get(keys.engine_epoch_key(SOL))) == 2
                placed = []
                for i in range(6):  # queued while the old engine's read is still blocked
                    side, price = ("buy", "150") if i % 2 else ("sell", "151")
                    r = await bob.place_order(side=side, type="limit", price=price, quantity="0.5", market=SOL)
                    assert r.status in (200, 202), r.body
                    placed.append(r.body["order"]["orderId"] if r.status == 200 else r.body["orderId"])
                old.send_signal(signal.SIGCONT)  # it reads once more, then finds itself fenced
                code = await asyncio.to_thread(old.wait, 20)
                # 3: fenced (settle or lease renewal refused); 1: the pause outlived its
                # Redis socket timeout. Either way it settled nothing.
                assert code in (1, 3), code
                st = await wait_engine_caught_up(server.url, SOL, p_new, timeout_s=20)
                for oid in placed:
                    rec = (await bob.get_order(oid)).body
                    assert rec["status"] in ("new", "filled", "partially_filled"), rec
                rep = await replay_market(server.url, SOL)
                assert (rep["seq"], rep["stateHash"]) == (st["seq"], st["stateHash"])
                assert replay_cli(server.url, SOL)["stateHash"] == st["stateHash"]
                r = await bob.cancel_all(SOL)
                assert r.status == 200, r.body
                r = await alice.cancel_all(SOL)
                assert r.status == 200, r.body
                await wait_engine_caught_up(server.url, SOL, p_new)
                for oid in placed:  # an orphaned order would stay `new`, its funds locked
                    rec = (await bob.get_order(oid)).body
                    assert rec["status"] in ("cancelled", "filled"), rec
                for c in (alice, bob):
                    assert all(Decimal(b["locked"]) == 0 for b in (await c.balance_map()).values())
            report = await Ledger(redis).conservation_report()
            for asset, row in report.items():
                assert row["held"] == row["deposits"] - row["withdrawals"], (asset, row)
            pending = await redis.xpending(keys.commands_stream(SOL), keys.ENGINE_GROUP)
            assert pending["pending"] == 0, pending
            print(f"\ntakeover: new owner {st['stateHash']} seq {st['seq']}; replay {rep['stateHash']}")
        finally:
            for p in (old, new):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(20)
                    except Exception:
                        p.kill()
            await redis.aclose()
            stack.stop_all()
            shutil.rmtree(stack.state_dir, ignore_errors=True)

