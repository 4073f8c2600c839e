"""Composition root of the API: settings -> Redis -> Api -> aiohttp, graceful on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from cryptex_api.app import Api, create_app
from cryptex_api.settings import ApiSettings
from cryptex_common import runtime
from cryptex_common.logs import configure_logging
from cryptex_common.settings import load_settings

log = logging.getLogger("cryptex.api")


async def open_history(settings: ApiSettings) -> Any:
    """The DB-backed read side (dbproc's tables); None when disabled or unavailable."""
    if not settings.history_enabled:
        return None
    import asyncpg

    from cryptex_api.history import HistoryReader

    # min_size=0: no connection at start, so the order path never waits for PostgreSQL;
    # history routes answer 503 while it is away.
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=8,
                                     command_timeout=10)
    return HistoryReader(pool)


async def serve(settings: ApiSettings) -> None:
    stop = asyncio.Event()
    runtime.install_stop_signals(stop)
    redis = aioredis.Redis.from_url(settings.redis_url, max_connections=256)
    history = await open_history(settings)
    api = Api(settings, redis, history)
    app = create_app(api)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    log.info("api listening", extra={"host": settings.host, "port": settings.port})
    await stop.wait()
    log.info("api stopping: no new requests, finishing in-flight ones")
    await runner.cleanup()  # stops accepting, waits for handlers up to shutdown_timeout
    if history is not None:
        await history.pool.close()
    await redis.aclose()


def main() -> None:
    settings = load_settings(ApiSettings)
    configure_logging("api", settings.log_level)
    runtime.run(lambda: serve(settings))
