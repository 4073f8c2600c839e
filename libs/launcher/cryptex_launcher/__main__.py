"""`./cryptex <command>`: up, demo, register, replay, and single services."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cryptex_launcher.stack import (
    Stack,
    StartError,
    port_in_use,
    start_local_postgres,
    start_local_redis,
    stop_local_postgres,
    stop_process,
    wait_redis_loaded,
)

if TYPE_CHECKING:
    from cryptex_launcher.redis_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[3]


def _state_dir() -> Path:
    return Path(os.environ.get("CRYPTEX_STATE_DIR", ROOT / ".cryptex"))


def _markets_file() -> Path:
    return Path(os.environ.get("CRYPTEX_MARKETS_FILE", ROOT / "markets.yaml"))


async def register_markets(redis_url: str, path: Path) -> list:
    from cryptex_common.markets import load_markets_yaml

    specs = load_markets_yaml(path.read_text())
    await register_specs(redis_url, specs)
    return specs


async def register_specs(redis_url: str, specs: list) -> None:
    from cryptex_common import redis_client
    from cryptex_common.registry import register_market

    redis = redis_client.connect(redis_url, "launcher")
    try:
        for spec in specs:
            await register_market(redis, spec)
    finally:
        await redis.aclose()


class _Signals:
    """SIGINT/SIGTERM: while starting, interrupt the start (everything started is stopped);
    once up, ask the supervision loop to stop."""

    def __init__(self) -> None:
        self.stopping = False
        self.interrupt = True

    def __call__(self, *_: object) -> None:
        self.stopping = True
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt


@dataclass
class _Up:
    """What `up` runs: the stack, and its own Redis/PostgreSQL when no URL is configured
    (with --redis-cluster its own local Redis Cluster, on `cluster_ports`, instead of Redis)."""

    stack: Stack
    state: Path
    redis_port: int | None
    pg_port: int | None
    timeout_s: float
    redis_proc: subprocess.Popen[bytes] | None = None
    pg_dir: Path | None = None
    cluster_ports: list[int] | None = None
    cluster: LocalCluster | None = None

    @property
    def cluster_dir(self) -> Path:
        return _cluster_dir(self.state)


def _cluster_dir(state: Path) -> Path:
    return state / "redis-cluster"


def _refusal(args: argparse.Namespace) -> str | None:
    """Why `up` with these options must not start at all (None when it may)."""
    if not args.redis_cluster:
        return None
    if os.environ.get("CRYPTEX_REDIS_URL"):
        return ("error: --redis-cluster starts a local Redis Cluster, but CRYPTEX_REDIS_URL is set "
                "(your own Redis): unset it or drop --redis-cluster; nothing started")
    from cryptex_launcher.redis_cluster import NODES, existing_ports

    old = existing_ports(_cluster_dir(_state_dir()))
    if old and len(old) != NODES:
        return (f"error: {_cluster_dir(_state_dir())} holds the data of {len(old)} cluster nodes "
                f"(ports {old}), not {NODES}; nothing started")
    return None


def _plan_cluster_ports(state: Path) -> list[int]:
    """The local cluster's ports, reserved before any service is planned on one of them."""
    from cryptex_launcher.redis_cluster import plan_ports

    return plan_ports(_cluster_dir(state))


def _plan_up(args: argparse.Namespace) -> _Up:
    from cryptex_common.markets import load_markets_yaml

    specs = load_markets_yaml(_markets_file().read_text())
    redis_port = pg_port = None
    cluster_ports = None
    redis_url = os.environ.get("CRYPTEX_REDIS_URL")
    if args.redis_cluster:
        from cryptex_common.redis_client import cluster_url

        cluster_ports = _plan_cluster_ports(_state_dir())
        redis_url = cluster_url([("127.0.0.1", p) for p in cluster_ports])
    elif not redis_url:
        redis_port = int(os.environ.get("CRYPTEX_LOCAL_REDIS_PORT", "6390"))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    database_url = os.environ.get("CRYPTEX_DATABASE_URL")
    if not database_url:
        pg_port = int(os.environ.get("CRYPTEX_LOCAL_PG_PORT", "5442"))
        database_url = f"postgresql://postgres@127.0.0.1:{pg_port}/cryptex"
    stack = Stack(
        redis_url=redis_url, database_url=database_url, markets=specs, state_dir=_state_dir(),
        admin_token=os.environ.get("CRYPTEX_ADMIN_TOKEN", "dev-admin-token"),
        api_port=int(os.environ.get("CRYPTEX_API_PORT", "8080")),
        ws_port=int(os.environ.get("CRYPTEX_WS_PORT", "8081")),
        with_demo=not args.no_demo,
        # on the cluster an answered order and each settle step wait for a replica (decision 0013)
        extra_env={"CRYPTEX_REDIS_WAIT_REPLICAS": os.environ.get("CRYPTEX_REDIS_WAIT_REPLICAS", "1")}
        if args.redis_cluster else {},
    )
    stack.plan()
    timeout_s = float(os.environ.get("CRYPTEX_START_TIMEOUT_S", "300"))
    return _Up(stack, stack.state_dir, redis_port, pg_port, timeout_s, cluster_ports=cluster_ports)


def _taken_ports(up: _Up) -> list[str]:
    """One line per port the stack needs that something already holds."""
    wanted: dict[str, int] = {}
    if up.redis_port:
        wanted["Redis, CRYPTEX_LOCAL_REDIS_PORT"] = up.redis_port
    for port in up.cluster_ports or []:
        wanted[f"Redis Cluster node, {up.cluster_dir / str(port)}"] = port
    if up.pg_port:
        wanted["PostgreSQL, CRYPTEX_LOCAL_PG_PORT"] = up.pg_port
    env_names = {"api": "API, CRYPTEX_API_PORT", "wsgateway": "WebSocket gateway, CRYPTEX_WS_PORT"}
    for name, port in up.stack.fixed_ports().items():
        wanted[env_names.get(name, name)] = port
    return [f"error: port {port} ({label}) is already in use: another `./cryptex up` or server holds it"
            for label, port in wanted.items() if port_in_use(port)]


def _lock_state_dir(state: Path) -> IO[str] | None:
    """Hold <state>/up.lock for as long as `up` runs: one `up` per state dir."""
    state.mkdir(parents=True, exist_ok=True)
    lock = open(state / "up.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def cmd_up(args: argparse.Namespace) -> int:
    """Refuse at once (starting nothing) when a port is taken; otherwise start Redis (waiting
    until it has loaded its data), PostgreSQL, the markets and every service. On any start-up
    failure or Ctrl-C everything started is stopped. With --redis-cluster a local Redis
    Cluster (3 primaries + 3 replicas, data in <state>/redis-cluster/) replaces Redis."""
    refusal = _refusal(args)
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    up = _plan_up(args)
    taken = _taken_ports(up)
    if taken:
        print("\n".join(taken), file=sys.stderr)
        print("cryptex up: nothing started; stop what holds these ports or set the variables above",
              file=sys.stderr)
        return 1
    lock = _lock_state_dir(up.state)
    if lock is None:
        print(f"error: another `./cryptex up` uses {up.state} ({up.state / 'up.lock'}); nothing started",
              file=sys.stderr)
        return 1
    signals = _Signals()
    signal.signal(signal.SIGINT, signals)
    signal.signal(signal.SIGTERM, signals)
    try:
        _start(up)
        signals.interrupt = False
        _supervise(up, signals)
        return 0
    except KeyboardInterrupt:
        print("interrupted while starting", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, StartError):
            traceback.print_exc()
        print(f"error: cryptex up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signals.interrupt = False
        _stop(up)
        lock.close()


def _start_cluster(up: _Up) -> None:
    from cryptex_launcher.redis_cluster import start_cluster

    began = time.monotonic()
    print(f"starting a Redis Cluster (3 primaries + 3 replicas) on ports "
          f"{','.join(map(str, up.cluster_ports or []))} (data in {up.cluster_dir})", flush=True)
    up.cluster = start_cluster(up.cluster_dir, ports=up.cluster_ports, timeout_s=up.timeout_s)
    how = "created" if up.cluster.created else "restarted on its data"
    print(f"Redis Cluster ready after {time.monotonic() - began:.1f}s ({how})", flush=True)


def _wait_own_redis(url: str, timeout_s: float) -> None:
    """Until the user's Redis (CRYPTEX_REDIS_URL) has loaded its data; for a Redis Cluster
    (`redis+cluster://` URL) each of its seed nodes."""
    from cryptex_common.redis_client import cluster_nodes

    seeds = cluster_nodes(url)
    for host, port in seeds or []:
        wait_redis_loaded(f"redis://{f'[{host}]' if ':' in host else host}:{port}/0", timeout_s)
    if seeds is None:
        wait_redis_loaded(url, timeout_s)


def _start(up: _Up) -> None:
    if up.cluster_ports:
        _start_cluster(up)
    elif up.redis_port:
        began = time.monotonic()
        print(f"starting Redis on port {up.redis_port} (data in {up.state / 'redis'})", flush=True)
        up.redis_proc = start_local_redis(up.state, up.redis_port, up.timeout_s)
        print(f"Redis ready after {time.monotonic() - began:.1f}s", flush=True)
    else:
        _wait_own_redis(up.stack.redis_url, up.timeout_s)
    if up.pg_port:
        print(f"starting PostgreSQL on port {up.pg_port} (data in {up.state / 'pg'})", flush=True)
        up.pg_dir = start_local_postgres(up.state, up.pg_port, up.timeout_s)
    asyncio.run(register_specs(up.stack.redis_url, up.stack.markets))
    up.stack.start_all()


def _supervise(up: _Up, signals: _Signals) -> None:
    stack = up.stack
    redis = "Redis Cluster" if up.cluster is not None else "Redis"
    print(f"Cryptex is up: API http://127.0.0.1:{stack.api_port}  "
          f"WebSocket ws://127.0.0.1:{stack.ws_port}/ws  {redis} {stack.redis_url}", flush=True)
    print(f"services: {', '.join(stack.services)}; logs in {up.state / 'logs'}; Ctrl-C stops all")
    print(f"admin token: {stack.admin_token}", flush=True)
    while not signals.stopping:
        for name, svc in stack.services.items():
            if svc.process and svc.process.poll() is not None and not signals.stopping:
                print(f"{name} exited with {svc.process.returncode}; restarting", file=sys.stderr)
                time.sleep(min(5, 0.5 * (svc.restarts + 1)))
                svc.restarts += 1
                stack.start(name)
        time.sleep(0.5)


def _stop(up: _Up) -> None:
    """Services first (the engines write their last snapshot to Redis), then the servers."""
    print("stopping...", flush=True)
    if any(svc.process for svc in up.stack.services.values()):
        codes = up.stack.stop_all()
        print("exit codes: " + ", ".join(f"{k}={v}" for k, v in codes.items()), flush=True)
    if up.redis_proc is not None:
        stop_process(up.redis_proc)
    if up.cluster is not None:
        up.cluster.stop()
    if up.pg_dir is not None:
        stop_local_postgres(up.pg_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    from cryptex_common.logs import configure_logging
    from cryptex_launcher.demo import run_demo

    configure_logging("demo", "INFO")
    token = os.environ.get("CRYPTEX_ADMIN_TOKEN", "dev-admin-token")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(args.api, token))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    url = os.environ.get("CRYPTEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    specs = asyncio.run(register_markets(url, Path(args.file)))
    print("registered: " + ", ".join(s.symbol for s in specs))
    return 0


def cmd_replay(args: list[str]) -> int:
    from cryptex_launcher.replay import run_replay

    return run_replay(args)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="cryptex")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the whole exchange locally")
    up.add_argument("--no-demo", action="store_true", help="without the demo market maker")
    up.add_argument("--redis-cluster", action="store_true",
                    help="on a local Redis Cluster (3 primaries + 3 replicas) instead of one Redis")
    demo = sub.add_parser("demo", help="run the demo market maker against a running API")
    demo.add_argument("--api", default=os.environ.get("CRYPTEX_API_URL", "http://127.0.0.1:8080"))
    reg = sub.add_parser("register", help="register markets.yaml in Redis")
    reg.add_argument("--file", default=str(_markets_file()))
    # replay's options are the engine's (`python -m cryptex_engine replay --help`)
    sub.add_parser("replay", add_help=False,
                   help="rebuild a market from its stream and print its state hash (--market M)")
    args, rest = parser.parse_known_args()
    if args.command == "replay":
        return cmd_replay(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"up": cmd_up, "demo": cmd_demo, "register": cmd_register}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
