"""Composition root of the API: settings -> Redis pools -> Api -> aiohttp, graceful on SIGTERM.

Two listening sockets: the API port (REST, the web page, /healthz, /readyz) behind a
connection cap and a header-read timeout, and the ops port (/healthz, /readyz, /metrics),
which no public route or ingress exposes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from cryptex_api.app import Api, create_app
from cryptex_api.serving import CappedTCPSite
from cryptex_api.settings import ApiSettings
from cryptex_common import redis_client, resp_cluster, runtime
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
    # separate pools: public reads never take the connections signed orders need
    redis = redis_client.connect(settings.redis_url, "api", max_connections=settings.redis_order_connections,
                                 wait_s=settings.redis_order_wait_s)
    public_redis = redis_client.connect(settings.redis_url, "api-public",
                                        max_connections=settings.redis_public_connections,
                                        wait_s=settings.redis_public_wait_s)
    history = await open_history(settings)
    order_redis = resp_cluster.fast_client(settings.redis_url, settings.redis_order_wait_s)
    api = Api(settings, redis, history, public_redis, order_redis)
    runner = web.AppRunner(create_app(api), access_log=None, shutdown_timeout=settings.shutdown_timeout_s,
                           keepalive_timeout=settings.header_timeout_s)
    await runner.setup()
    site = CappedTCPSite(runner, settings.host, settings.port, max_connections=settings.max_connections)
    await site.start()
    ops = await runtime.start_ops_server(settings.ops_host, settings.ops_port, api.ready)
    log.info("api listening", extra={"host": settings.host, "port": settings.port})
    await stop.wait()
    log.info("api stopping: no new requests, finishing in-flight ones")
    await runner.cleanup()  # stops accepting, waits for handlers up to shutdown_timeout
    await ops.cleanup()
    if history is not None:
        await history.pool.close()
    await redis.aclose()
    await public_redis.aclose()
    if order_redis is not None:
        await order_redis.aclose()


def main() -> None:
    settings = load_settings(ApiSettings)
    configure_logging("api", settings.log_level)
    runtime.run(lambda: serve(settings))
