"""Composition root of the engine: settings -> Redis -> market spec -> EngineService."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import redis.asyncio as aioredis
from aiohttp import web

from cryptex_common import redis_client, registry, runtime
from cryptex_common.ledger import Ledger
from cryptex_common.logs import configure_logging
from cryptex_common.markets import MarketSpec, market_tag, normalize_symbol
from cryptex_common.settings import load_settings
from cryptex_engine.housekeeping import StreamTrimmed
from cryptex_engine.lease import Fenced
from cryptex_engine.reconcile import relay_loop
from cryptex_engine.service import EngineService
from cryptex_engine.settings import EngineSettings

log = logging.getLogger("cryptex.engine")


async def wait_for_market(redis: aioredis.Redis, symbol: str, stop: asyncio.Event) -> MarketSpec | None:
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
    # the socket timeout must outlast a blocking read (redis-py's default is 5 s)
    redis = redis_client.connect(settings.redis_url, f"engine-{market_tag(settings.market)}", decode=True,
                                 socket_timeout_s=settings.block_ms / 1000 + 5)
    service: EngineService | None = None

    async def ready() -> bool:
        await redis.ping()
        return service is not None and service.ready

    async def state(_: web.Request) -> web.Response:
        """{"market","seq","settledSeq","stateHash","lastStreamId"}: the core's state hash,
        computed by the main loop between two batches (so of a consistent state); equal to
        `cryptex replay --market M --upto-seq <seq>`."""
        if service is None or not service.ready:
            return web.json_response({"code": "NOT_READY", "message": "engine not ready"}, status=503)
        try:
            info = await asyncio.wait_for(service.state(), settings.shutdown_timeout_s)
        except (RuntimeError, TimeoutError):
            return web.json_response({"code": "NOT_READY", "message": "engine stopping"}, status=503)
        return web.json_response(info)

    app = web.Application()
    runtime.add_ops_routes(app, ready)
    app.router.add_get("/state", state)
    ops = web.AppRunner(app, access_log=None)
    await ops.setup()
    await web.TCPSite(ops, settings.ops_host, settings.ops_port).start()
    log.info("ops server listening",
             extra={"ops_port": ops.addresses[0][1] if ops.addresses else settings.ops_port})
    code = 0
    # every engine may relay stuck outbox entries; the reconciler lease lets one at a time
    relay = asyncio.create_task(relay_loop(redis, Ledger(redis), f"engine-{market_tag(settings.market)}-{os.getpid()}",
                                           stop))
    try:
        spec = await wait_for_market(redis, settings.market, stop)
        if spec is not None:
            service = EngineService(settings, redis, spec)
            await service.run(stop)
    except Fenced as exc:
        log.error("fenced: another engine owns the market; exiting", extra={"error": str(exc)})
        code = 3
    except StreamTrimmed as exc:
        log.error("cannot recover: stream trimmed and no valid snapshot", extra={"error": str(exc)})
        code = 4
    finally:
        stop.set()  # the relay ends at its next check even if a client swallows the cancel
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
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
