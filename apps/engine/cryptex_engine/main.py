"""Composition root of the engine: settings -> Redis -> market spec -> EngineService."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import redis.asyncio as aioredis

from cryptex_common import registry, runtime
from cryptex_common.logs import configure_logging
from cryptex_common.markets import normalize_symbol
from cryptex_common.settings import load_settings
from cryptex_engine.service import EngineService, Fenced
from cryptex_engine.settings import EngineSettings

log = logging.getLogger("cryptex.engine")


async def wait_for_market(redis: aioredis.Redis, symbol: str, stop: asyncio.Event):  # type: ignore[no-untyped-def]
    warned = False
    while not stop.is_set():
        spec = await registry.get_market(redis, symbol)
        if spec is not None:
            return spec
        if not warned:
            log.warning("market not registered yet; waiting", extra={"market": symbol})
            warned = True
        await asyncio.sleep(0.5)
    return None


async def serve(settings: EngineSettings) -> int:
    stop = asyncio.Event()
    runtime.install_stop_signals(stop)
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    service: EngineService | None = None

    async def ready() -> bool:
        await redis.ping()
        return service is not None and service.ready

    ops = await runtime.start_ops_server(settings.ops_host, settings.ops_port, ready)
    code = 0
    try:
        spec = await wait_for_market(redis, settings.market, stop)
        if spec is not None:
            service = EngineService(settings, redis, spec)
            await service.run(stop)
    except Fenced as exc:
        log.error("fenced: another engine owns the market; exiting", extra={"error": str(exc)})
        code = 3
    finally:
        await ops.cleanup()
        await redis.aclose()
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cryptex_engine", description="Cryptex matching engine")
    parser.add_argument("--market", help="e.g. SOL/USDC (or CRYPTEX_MARKET)")
    args = parser.parse_args(argv)
    overrides = {"market": normalize_symbol(args.market)} if args.market else {}
    settings = load_settings(EngineSettings, **overrides)
    configure_logging("engine", settings.log_level, market=settings.market)
    code = 0

    async def _main() -> None:
        nonlocal code
        code = await serve(settings)

    runtime.run(_main)
    sys.exit(code)
