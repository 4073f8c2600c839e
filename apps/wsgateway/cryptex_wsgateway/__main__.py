"""`python -m cryptex_wsgateway`: serve /ws, /healthz and /readyz on the public port
(`CRYPTEX_HOST`/`CRYPTEX_PORT`), and /healthz, /readyz, /metrics on the ops port
(`CRYPTEX_OPS_HOST`/`CRYPTEX_OPS_PORT`), which no public route or ingress exposes.

SIGTERM/SIGINT: stop listening, send every socket a close frame (1001 "server shutdown"),
then exit 0.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from cryptex_common import redis_client
from cryptex_common.logs import configure_logging
from cryptex_common.runtime import install_stop_signals, run, start_ops_server
from cryptex_common.settings import load_settings
from cryptex_wsgateway.gateway import Gateway
from cryptex_wsgateway.settings import WsSettings

log = logging.getLogger("cryptex_wsgateway")


async def main() -> None:
    settings = load_settings(WsSettings)
    configure_logging("wsgateway", settings.log_level, instance=settings.instance_id)
    redis = redis_client.connect(settings.redis_url, "wsgateway")
    gateway = Gateway(settings, redis)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await gateway.start()
    ops = await start_ops_server(settings.ops_host, settings.ops_port, gateway.is_ready)
    runner = web.AppRunner(
        gateway.app(), access_log=None, shutdown_timeout=settings.shutdown_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096)
    await site.start()
    log.info("wsgateway listening", extra={"host": settings.host, "port": settings.port})
    await stop.wait()
    log.info("wsgateway stopping")
    await runner.cleanup()  # stops listening, then closes sockets (app on_shutdown)
    await ops.cleanup()
    await redis.aclose()


if __name__ == "__main__":
    run(main)
