"""The Binance-compatible WebSocket facade, served by the gateway under `/binance`.

A translation layer over the gateway's own upstream subscriptions and fan-out (taps on the
native topics, `fanout.Hub` for sending), not a second data path:
- `/binance/ws`, `/binance/ws/<stream | listenKey | anything>`, `/binance/stream?streams=a/b`:
  Binance market streams and user data with live SUBSCRIBE (`sockets.StreamSockets`);
- `/binance/ws-api/v3`: the WebSocket API subset ccxt.pro uses for user data (`wsapi.WsApi`).

See docs/binance-compat-ws.md for what is supported and every difference from Binance.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from cryptex_wsgateway.binance.sockets import StreamSockets
from cryptex_wsgateway.binance.wsapi import WsApi

if TYPE_CHECKING:
    from cryptex_wsgateway.gateway import Gateway

LISTEN_KEY_CHECK_S = 10.0  # how often sockets on a listen key check that it still exists
CLOSE_GOING_AWAY = 1001


def add_binance_routes(app: web.Application, gateway: Gateway) -> None:
    """Serve the facade on `app`; its sockets close (1001) when the app shuts down."""
    streams = StreamSockets(gateway)
    api = WsApi(gateway, streams)
    app.router.add_get("/binance/ws", streams.raw_handler)
    app.router.add_get("/binance/ws/{name}", streams.raw_handler)
    app.router.add_get("/binance/stream", streams.combined_handler)
    app.router.add_get("/binance/ws-api/v3", api.handler)
    tasks: list[asyncio.Task[None]] = []

    async def check_listen_keys() -> None:
        while True:
            await asyncio.sleep(LISTEN_KEY_CHECK_S)
            await streams.expire_listen_keys()

    async def on_startup(_: web.Application) -> None:
        tasks.append(asyncio.get_running_loop().create_task(check_listen_keys()))

    async def on_shutdown(_: web.Application) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await streams.close_all(CLOSE_GOING_AWAY, "server shutdown")
        await api.close_all(CLOSE_GOING_AWAY, "server shutdown")

    app.on_startup.append(on_startup)
    app.on_shutdown.insert(0, on_shutdown)
