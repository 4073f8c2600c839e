"""Engine crash-safety pieces, each with real processes on a real Redis:
- /state equals `cryptex replay` for the same seq after a random flow (and after a restart
  that loads a snapshot);
- snapshots survive amounts beyond 64 bits and a corrupted snapshot is refused, not trusted;
- a second engine for the same market stands by (log + cryptex_engine_fenced_total) and
  takes over only when the first is gone;
- an engine whose lease was stolen exits with code 3 without writing anything;
- trimming never drops what the snapshot or a consumer group still needs.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys
from cryptex_engine.replay import ReplayError, replay_market
from cryptex_engine.snapshots import SnapshotError, decode_snapshot, encode_snapshot
from cryptex_launcher.stack import free_port, wait_for_port
from tests.chaos.support import (
    ADMIN,
    BTC,
    SOL,
    FlowLog,
    engine_name,
    engine_proc,
    engine_state,
    funded_users,
    http_json,
    make_stack,
    register_all,
    replay_cli,
    trader,
    wait_engine_caught_up,
)
from tests.support.servers import RedisServer, redis_server


async def run_flow(api_port: int, seconds: float, users: int = 3, seed: int = 1,
                   markets: tuple[str, ...] = (SOL, BTC)) -> FlowLog:
    log = FlowLog()
    async with CryptexClient(f"http://127.0.0.1:{api_port}", admin_token=ADMIN) as admin:
        clients = await funded_users(admin, users, log)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(trader(c, random.Random(seed + i), stop, log, pace_s=0.02, markets=markets))
                 for i, c in enumerate(clients)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return log


# --- snapshot codec --------------------------------------------------------------------
def test_snapshot_codec_keeps_integers_beyond_64_bits_and_refuses_corruption() -> None:
    big = 10**18 * 5_000  # 5,000 units of an 18-decimal asset: beyond 2**64
    state = {"market": "ETH/USDC", "lastStreamId": "1-0", "core": {"orders": [[1, "u", big]]}}
    raw = encode_snapshot(state, 7)
    assert b'"codec":"json"' in raw.split(b"\n", 1)[0]
    back = decode_snapshot(raw)
    assert back["core"]["orders"][0][2] == big and isinstance(back["core"]["orders"][0][2], int)
    assert back["seq"] == 7
    small = encode_snapshot({"a": 2**63}, 1)
    assert b'"codec":"orjson"' in small and decode_snapshot(small.decode())["a"] == 2**63
    flipped = raw.replace(str(big).encode(), str(big + 1).encode())
    with pytest.raises(SnapshotError):
        decode_snapshot(flipped)
    with pytest.raises(SnapshotError):
        decode_snapshot(raw[:-3])


# --- /state == replay ------------------------------------------------------------------
async def test_state_hash_equals_replay_after_random_flow_and_restart() -> None:
    with redis_server(appendonly=True) as server:
        stack = make_stack(server.url)
        await register_all(server.url)
        stack.start_all()
        try:
            log = await run_flow(stack.api_port, 6.0)
            assert sum(1 for _ in log.accepted) > 50, log.outcomes
            for symbol in (SOL, BTC):
                port = stack.services[engine_name(symbol)].ops_port
                assert port
                st = await wait_engine_caught_up(server.url, symbol, port)
                assert set(st) == {"market", "seq", "settledSeq", "stateHash", "lastStreamId"}
                rep = await replay_market(server.url, symbol, st["seq"])
                assert (rep["seq"], rep["stateHash"], rep["source"]) == (st["seq"], st["stateHash"], "stream")
                # an earlier seq: the CLI stops there (and prints what it rebuilt)
                cli = replay_cli(server.url, symbol, st["seq"] // 2)
                assert cli["seq"] == str(st["seq"] // 2) and cli["source"] == "stream"
                assert cli["stateHash"] == (await replay_market(server.url, symbol, st["seq"] // 2))["stateHash"]
            # kill -9 the SOL engine: it restarts from its snapshot and reports the same hash
            name = engine_name(SOL)
            before = await engine_state(stack.services[name].ops_port)  # type: ignore[arg-type]
            stack.restart(name)
            after = await wait_engine_caught_up(server.url, SOL, stack.services[name].ops_port)  # type: ignore[arg-type]
            assert after == before
            assert "snapshot loaded" in stack.log_text(name)
            from_snap = await replay_market(server.url, SOL, use_snapshot=True)
            assert from_snap["stateHash"] == after["stateHash"] and from_snap["source"].startswith("snapshot@")
        finally:
            codes = stack.stop_all()
            shutil.rmtree(stack.state_dir, ignore_errors=True)
        assert all(c == 0 for c in codes.values()), codes


def test_corrupt_snapshot_is_refused_and_the_stream_rebuilds_the_market(aof_redis: RedisServer) -> None:
    asyncio.run(_corrupt_snapshot(aof_redis))


async def _corrupt_snapshot(server: RedisServer) -> None:
    redis = aioredis.Redis.from_url(server.url)
    await redis.flushall()
    stack = make_stack(server.url)
    await register_all(server.url)
    stack.start_all()
    try:
        await run_flow(stack.api_port, 3.0, users=2)
        name = engine_name(SOL)
        port = stack.services[name].ops_port
        before = await wait_engine_caught_up(server.url, SOL, port)  # type: ignore[arg-type]
        stack.kill(name)
        raw = await redis.get(keys.snapshot_key(SOL))
        assert raw
        await redis.set(keys.snapshot_key(SOL), raw[:-10] + b"0123456789")
        stack.start(name)
        after = await wait_engine_caught_up(server.url, SOL, port)  # type: ignore[arg-type]
        assert after["stateHash"] == before["stateHash"]
        assert "snapshot rejected" in stack.log_text(name)
    finally:
        stack.stop_all()
        await redis.aclose()
        shutil.rmtree(stack.state_dir, ignore_errors=True)


# --- fencing ---------------------------------------------------------------------------
async def metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + "{") and f'market="{SOL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_second_engine_stands_by_and_takes_over_only_when_the_first_is_gone(tmp_path: Path) -> None:
    with redis_server(appendonly=True) as server:
        await register_all(server.url)
        stack = make_stack(server.url)
        stack.plan()
        stack.start("api")
        wait_for_port(stack.api_port)
        p1, p2 = free_port(), free_port()
        first = engine_proc(server.url, SOL, p1, str(tmp_path / "e1.log"))
        second = None
        try:
            await engine_state(p1)
            second = engine_proc(server.url, SOL, p2, str(tmp_path / "e2.log"))
            wait_for_port(p2)
            await asyncio.sleep(1.0)
            second_log = (tmp_path / "e2.log").read_text()
            assert "another engine holds this market; standing by" in second_log
            assert await metric(p2, "cryptex_engine_fenced_total") == 1.0
            assert await metric(p1, "cryptex_engine_fenced_total") == 0.0
            status, _ = await http_json(f"http://127.0.0.1:{p2}/readyz")
            assert status == 503
            log = await run_flow(stack.api_port, 2.0, users=2, markets=(SOL,))
            st1 = await wait_engine_caught_up(server.url, SOL, p1)
            assert st1["seq"] > 1 and log.accepted
            assert "engine owns market" not in (tmp_path / "e2.log").read_text()
            # the first dies: the second takes the lease once it lapses, with a new epoch
            first.kill()
            first.wait(10)
            st2 = await wait_engine_caught_up(server.url, SOL, p2, timeout_s=30)
            assert st2["stateHash"] == st1["stateHash"]
            redis = aioredis.Redis.from_url(server.url)
            assert int(await redis.get(keys.engine_epoch_key(SOL))) == 2
            await redis.aclose()
            log2 = await run_flow(stack.api_port, 1.5, users=1, seed=9, markets=(SOL,))
            assert log2.accepted and (await wait_engine_caught_up(server.url, SOL, p2))["seq"] > st2["seq"]
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(20)
            stack.stop_all()
            shutil.rmtree(stack.state_dir, ignore_errors=True)


async def test_an_engine_whose_lease_was_stolen_exits_3_without_writing(tmp_path: Path) -> None:
    with redis_server(appendonly=True) as server:
        await register_all(server.url)
        stack = make_stack(server.url)
        stack.plan()
        stack.start("api")
        wait_for_port(stack.api_port)
        port = free_port()
        engine = engine_proc(server.url, SOL, port, str(tmp_path / "e.log"),
                             CRYPTEX_LEASE_TTL_MS="3000", CRYPTEX_SNAPSHOT_EVERY_S="0.2")
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            await engine_state(port)
            await run_flow(stack.api_port, 1.5, users=2, markets=(SOL,))
            await wait_engine_caught_up(server.url, SOL, port)
            await asyncio.sleep(0.5)  # a time-based snapshot of the final state
            # steal: a new epoch and a lease that names it (what a newer engine would hold)
            epoch = await redis.incr(keys.engine_epoch_key(SOL))
            await redis.set(keys.engine_lease_key(SOL), epoch, px=60_000)
            settled = await redis.get(keys.settled_seq_key(SOL))
            snapshot = await redis.get(keys.snapshot_key(SOL))
            events = await redis.xlen(keys.events_stream(SOL))
            # orders queued now reach the fenced engine: it must settle none of them
            flow = asyncio.create_task(run_flow(stack.api_port, 1.0, users=1, seed=5, markets=(SOL,)))
            started = time.monotonic()
            code = await asyncio.to_thread(engine.wait, 20)
            assert code == 3, code
            assert time.monotonic() - started < 5
            assert (await flow).accepted
            assert await redis.get(keys.settled_seq_key(SOL)) == settled
            assert await redis.get(keys.snapshot_key(SOL)) == snapshot
            assert await redis.xlen(keys.events_stream(SOL)) == events
            assert await redis.get(keys.engine_lease_key(SOL)) == str(epoch)  # not released
            text = (tmp_path / "e.log").read_text()
            assert "fenced: another engine owns the market; exiting" in text
        finally:
            if engine.poll() is None:
                engine.kill()
                engine.wait()
            await redis.aclose()
            stack.stop_all()
            shutil.rmtree(stack.state_dir, ignore_errors=True)


# --- trimming --------------------------------------------------------------------------
async def test_trimming_keeps_what_the_snapshot_and_the_consumer_groups_need() -> None:
    with redis_server(appendonly=True) as server:
        await register_all(server.url)
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        # a dbproc-like group on SOL's events that has acknowledged nothing yet
        await redis.xgroup_create(keys.events_stream(SOL), keys.DBPROC_GROUP, id="0", mkstream=True)
        stack = make_stack(server.url, env={"CRYPTEX_TRIM_EVERY_S": "0.5", "CRYPTEX_TRIM_MARGIN_MS": "0",
                                            "CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "100000",
                                            "CRYPTEX_SNAPSHOT_EVERY_S": "2"})
        stack.start_all()
        try:
            await run_flow(stack.api_port, 4.0, users=3)
            sol_port = stack.services[engine_name(SOL)].ops_port
            st = await wait_engine_caught_up(server.url, SOL, sol_port)  # type: ignore[arg-type]
            await asyncio.sleep(3.0)  # a snapshot at the final state, then a trim
            snap = decode_snapshot(await redis.get(keys.snapshot_key(SOL)))
            entries = await redis.xrange(keys.commands_stream(SOL))
            info = await redis.xinfo_stream(keys.commands_stream(SOL))
            assert info["entries-added"] > info["length"], "nothing was trimmed"
            # everything after the snapshot is still there, nothing before it
            assert entries[0][0] == snap["lastStreamId"]
            # events: SOL's group acknowledged nothing -> untouched; BTC has no dbproc group -> untouched
            for symbol in (SOL, BTC):
                ev = await redis.xinfo_stream(keys.events_stream(symbol))
                assert ev["entries-added"] == ev["length"] > 0
            # the group acknowledges the first half: events are trimmed up to that point only
            batch = await redis.xreadgroup(keys.DBPROC_GROUP, "c", {keys.events_stream(SOL): ">"})
            ids = [i for i, _ in batch[0][1]]
            half = ids[: len(ids) // 2]
            await redis.xack(keys.events_stream(SOL), keys.DBPROC_GROUP, *half)
            await asyncio.sleep(1.5)
            left = await redis.xrange(keys.events_stream(SOL))
            assert left[0][0] == ids[len(ids) // 2]  # the oldest pending entry is kept
            # replay: from an empty state it is refused; it starts from the snapshot instead
            with pytest.raises(ReplayError):
                await replay_market(server.url, SOL, use_snapshot=False)
            rep = await replay_market(server.url, SOL)
            assert rep["source"].startswith("snapshot@") and rep["stateHash"] == st["stateHash"]
            with pytest.raises(ReplayError):
                await replay_market(server.url, SOL, upto_seq=1)
            # a restart loads the snapshot and replays what follows it; with the snapshot gone
            # the engine refuses to start rather than rebuild a wrong book from a cut stream
            name = engine_name(SOL)
            stack.restart(name)
            assert (await wait_engine_caught_up(server.url, SOL, sol_port))["stateHash"] == st["stateHash"]  # type: ignore[arg-type]
            stack.kill(name)
            await redis.delete(keys.snapshot_key(SOL))
            stack.start(name)
            proc = stack.services[name].process
            assert proc is not None
            assert await asyncio.to_thread(proc.wait, 30) == 4
            assert "stream trimmed and no valid snapshot" in stack.log_text(name)
        finally:
            stack.stop_all()
            await redis.aclose()
            shutil.rmtree(stack.state_dir, ignore_errors=True)
