"""`./cryptex <command>`: up, demo, register, replay, and single services."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _state_dir() -> Path:
    return Path(os.environ.get("CRYPTEX_STATE_DIR", ROOT / ".cryptex"))


def _markets_file() -> Path:
    return Path(os.environ.get("CRYPTEX_MARKETS_FILE", ROOT / "markets.yaml"))


async def register_markets(redis_url: str, path: Path) -> list:
    import redis.asyncio as aioredis

    from cryptex_common.markets import load_markets_yaml
    from cryptex_common.registry import register_market

    specs = load_markets_yaml(path.read_text())
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for spec in specs:
            await register_market(redis, spec)
    finally:
        await redis.aclose()
    return specs


def cmd_up(args: argparse.Namespace) -> int:
    from cryptex_launcher.stack import (
        Stack,
        start_local_postgres,
        start_local_redis,
        stop_local_postgres,
    )

    state = _state_dir()
    state.mkdir(parents=True, exist_ok=True)
    redis_proc = pg_dir = None
    redis_url = os.environ.get("CRYPTEX_REDIS_URL")
    if not redis_url:
        port = int(os.environ.get("CRYPTEX_LOCAL_REDIS_PORT", "6390"))
        redis_proc = start_local_redis(state, port)
        redis_url = f"redis://127.0.0.1:{port}/0"
    database_url = os.environ.get("CRYPTEX_DATABASE_URL")
    if not database_url:
        port = int(os.environ.get("CRYPTEX_LOCAL_PG_PORT", "5442"))
        try:
            pg_dir = start_local_postgres(state, port)
            database_url = f"postgresql://postgres@127.0.0.1:{port}/cryptex"
        except Exception as exc:  # the order path runs without it; history routes need it
            print(f"warning: local PostgreSQL not started ({exc}); history disabled", file=sys.stderr)
            database_url = f"postgresql://postgres@127.0.0.1:{port}/cryptex"
    specs = asyncio.run(register_markets(redis_url, _markets_file()))
    stack = Stack(
        redis_url=redis_url, database_url=database_url, markets=specs, state_dir=state,
        admin_token=os.environ.get("CRYPTEX_ADMIN_TOKEN", "dev-admin-token"),
        api_port=int(os.environ.get("CRYPTEX_API_PORT", "8080")),
        ws_port=int(os.environ.get("CRYPTEX_WS_PORT", "8081")),
        with_demo=not args.no_demo,
    )
    stack.plan()
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start_all()
        print(f"Cryptex is up: API http://127.0.0.1:{stack.api_port}  "
              f"WebSocket ws://127.0.0.1:{stack.ws_port}/ws  Redis {redis_url}")
        print(f"services: {', '.join(stack.services)}; logs in {state / 'logs'}; Ctrl-C stops all")
        print(f"admin token: {stack.admin_token}")
        while not stopping:
            for name, svc in stack.services.items():
                if svc.process and svc.process.poll() is not None and not stopping:
                    print(f"{name} exited with {svc.process.returncode}; restarting", file=sys.stderr)
                    time.sleep(min(5, 0.5 * (svc.restarts + 1)))
                    svc.restarts += 1
                    stack.start(name)
            time.sleep(0.5)
    finally:
        print("stopping...")
        codes = stack.stop_all()
        print("exit codes: " + ", ".join(f"{k}={v}" for k, v in codes.items()))
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        if pg_dir is not None:
            stop_local_postgres(pg_dir)
    return 0


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


def cmd_replay(args: argparse.Namespace) -> int:
    from cryptex_launcher.replay import replay_market

    url = os.environ.get("CRYPTEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    use_snapshot = True if args.from_snapshot else None
    result = asyncio.run(replay_market(url, args.market, args.upto_seq, use_snapshot))
    print(f"market {result['market']} seq {result['seq']} commands {result['commands']} "
          f"source {result['source']} lastStreamId {result['lastStreamId']} "
          f"stateHash {result['stateHash']}")
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="cryptex")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the whole exchange locally")
    up.add_argument("--no-demo", action="store_true", help="without the demo market maker")
    demo = sub.add_parser("demo", help="run the demo market maker against a running API")
    demo.add_argument("--api", default=os.environ.get("CRYPTEX_API_URL", "http://127.0.0.1:8080"))
    reg = sub.add_parser("register", help="register markets.yaml in Redis")
    reg.add_argument("--file", default=str(_markets_file()))
    rep = sub.add_parser("replay", help="rebuild a market from its stream and print its state hash")
    rep.add_argument("--market", required=True)
    rep.add_argument("--upto-seq", type=int, default=None,
                     help="stop after this sequence (compare with the engine's /state seq)")
    rep.add_argument("--from-snapshot", action="store_true",
                     help="start from the stored snapshot (automatic when the stream was trimmed)")
    args = parser.parse_args()
    return {"up": cmd_up, "demo": cmd_demo, "register": cmd_register, "replay": cmd_replay}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
