"""`./cryptex up` as a process: it refuses taken ports before touching anything, and a
start-up failure stops every server it started (issue 11, defect 8)."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from cryptex_common import keys
from cryptex_common.markets import load_markets_yaml
from tests.launcher.support import (
    ROOT,
    UpEnv,
    kill_stack,
    new_state_dir,
    ready_status,
    remove_state,
    server_pids,
    stack_pids,
    start_up,
)
from tests.support.servers import start_redis


@pytest.fixture
def env() -> Iterator[UpEnv]:
    env = UpEnv(new_state_dir())
    yield env
    remove_state(env)


def listen_on(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_up_refuses_taken_ports_at_once_and_touches_nothing(env: UpEnv) -> None:
    """issue 11 defect 8: with a port it needs taken, `up` came up half-way; it must refuse
    at once, one line per taken port, and create nothing."""
    held = [listen_on(env.api_port), listen_on(env.pg_port)]
    try:
        start = time.monotonic()
        up = start_up(env)
        code = up.wait_exit(30)
        elapsed = time.monotonic() - start
    finally:
        for sock in held:
            sock.close()
    assert code != 0, up.output
    assert elapsed < 10, f"took {elapsed:.1f}s to refuse"
    taken = [line for line in up.lines if "in use" in line]
    assert len(taken) == 2, up.output
    assert any(str(env.api_port) in line and "CRYPTEX_API_PORT" in line for line in taken), up.output
    assert any(str(env.pg_port) in line and "CRYPTEX_LOCAL_PG_PORT" in line for line in taken), up.output
    assert str(env.redis_port) not in up.output and str(env.ws_port) not in up.output
    assert not env.state.exists(), list(env.state.rglob("*"))
    assert stack_pids(env) == {}


def test_up_refuses_a_state_dir_another_up_uses(env: UpEnv) -> None:
    """issue 11 defect 8: two stacks on one data dir (other ports) would share its AOF and
    PostgreSQL data; the second `up` must refuse and start nothing."""
    env.state.mkdir(parents=True)
    with open(env.state / "up.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        up = start_up(env)
        code = up.wait_exit(30)
    assert code != 0 and "another `./cryptex up` uses" in up.output, up.output
    assert sorted(p.name for p in env.state.iterdir()) == ["up.lock"]
    assert stack_pids(env) == {}


def test_a_failed_postgres_start_stops_the_redis_it_started(env: UpEnv) -> None:
    """issue 11 defect 8: PostgreSQL failing to start left a stack half-way up ('history
    disabled'); it must fail and stop the Redis it already started."""
    (env.state / "pg").mkdir(parents=True)
    (env.state / "pg" / "PG_VERSION").write_text("15\n")  # a broken data dir: pg_ctl start fails
    up = start_up(env)
    code = up.wait_exit(60)
    assert code != 0, up.output
    assert "PostgreSQL" in up.output
    assert (env.state / "redis" / "redis.log").exists(), "Redis was started first"
    assert server_pids(env) == {}, f"left running: {server_pids(env)}\n{up.output}"
    assert stack_pids(env) == {}


def test_a_failure_after_both_servers_started_stops_both(env: UpEnv) -> None:
    """issue 11 defect 8: a start-up failure left Redis and PostgreSQL running as orphans.
    Here markets.yaml changes a registered market's tick size: registration fails after
    both servers are up, and `up` must stop both (checked by pid)."""
    spec = load_markets_yaml((ROOT / "markets.yaml").read_text())[0]
    old = spec.model_copy(update={"tick_size": "0.05"})
    (env.state / "redis").mkdir(parents=True)
    server = start_redis(appendonly=True, directory=str(env.state / "redis"))
    try:
        asyncio.run(_hset(server.url, keys.MARKETS_HASH, old.symbol, old.model_dump_json(by_alias=True)))
    finally:
        server.stop()
    up = start_up(env)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while up.process.poll() is None and time.monotonic() < deadline:
        seen.update(server_pids(env))
        time.sleep(0.05)
    code = up.wait_exit(60)
    assert code != 0, up.output
    assert "immutable" in up.output
    left = server_pids(env)
    assert left == {}, f"left running: {left}\n{up.output}"
    assert any("redis-server" in c for c in seen.values()) and any("postgres" in c for c in seen.values()), (
        f"both servers should have been started: {seen}")
    assert stack_pids(env) == {}


async def _hset(url: str, key: str, field: str, value: str) -> None:
    redis = aioredis.Redis.from_url(url)
    try:
        await redis.hset(key, field, value)
    finally:
        await redis.aclose()


@pytest.mark.slow
def test_a_second_up_leaves_the_running_stack_untouched(env: UpEnv) -> None:
    """issue 11 defect 8: a second `up` while another stack held the ports pointed its
    engines at the other stack's Redis and made its services restart. It must refuse at
    once, naming every port, and leave the first stack's processes and data as they were."""
    first = start_up(env)
    try:
        first.wait_up(120)
        before = asyncio.run(_snapshot(env))
        pids = set(stack_pids(env))
        ports_files = {p.name: p.read_text() for p in (env.state / "ports").iterdir()}
        start = time.monotonic()
        second = start_up(env)
        code = second.wait_exit(30)
        assert code != 0, second.output
        assert time.monotonic() - start < 10
        for port in env.ports:
            assert any(str(port) in line and "in use" in line for line in second.lines), second.output
        time.sleep(3)  # give a wrongly started second stack the time to do harm
        assert set(stack_pids(env)) == pids
        assert asyncio.run(_snapshot(env)) == before
        assert {p.name: p.read_text() for p in (env.state / "ports").iterdir()} == ports_files
        assert "restarting" not in first.output, first.output
        assert first.process.poll() is None
    finally:
        code = first.stop()
        kill_stack(env)
    assert code == 0, first.output


async def _snapshot(env: UpEnv) -> dict[str, object]:
    """What a second stack would change: the engines' fencing epochs, Redis' clients count
    by name, and whether the API answers ready."""
    redis = aioredis.Redis.from_url(env.redis_url)
    try:
        epochs = {s.symbol: await redis.get(keys.engine_epoch_key(s.symbol))
                  for s in load_markets_yaml((ROOT / "markets.yaml").read_text())}
    finally:
        await redis.aclose()
    return {"epochs": epochs, "ready": ready_status(env)}
