"""The shape every service shares: uvloop, JSON logs, SIGTERM/SIGINT -> a stop event,
and an ops HTTP server with /healthz, /readyz and /metrics.

Shutdown contract: on SIGTERM the service stops taking work, finishes what it holds,
flushes, and exits 0 within `shutdown_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[bool]]


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def metrics_handler(_: web.Request) -> web.Response:
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_ops_routes(app: web.Application, ready: ReadyCheck, with_metrics: bool = True) -> None:
    """/healthz and /readyz, and /metrics unless `with_metrics` is False (a public port
    must not serve /metrics: it belongs on the ops port only)."""
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        try:
            ok = await ready()
        except Exception:  # a failing dependency means not ready, never a crash
            ok = False
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if with_metrics:
        app.router.add_get("/metrics", metrics_handler)


async def start_ops_server(host: str, port: int, ready: ReadyCheck) -> web.AppRunner:
    app = web.Application()
    add_ops_routes(app, ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("ops server listening", extra={"ops_port": bound})
    return runner


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service's main coroutine on uvloop."""
    import uvloop

    uvloop.run(main())
