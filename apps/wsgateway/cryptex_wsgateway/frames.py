"""Inbound frames of a socket, with the limits every gateway protocol applies (the native
`/ws` and the Binance facade's sockets): the text of each acceptable frame, in order.

Policy, checked per frame in this order:
- a CLOSE or ERROR frame ends the stream (aiohttp's reader already answered a frame far
  over the size limit with 1009, invalid UTF-8 with 1007, a protocol error with 1002);
- while the socket is closing, frames are read and dropped;
- a binary frame: the protocol's refusal, then close 1003; over `max_frame_bytes`: its
  refusal, then close 1009;
- over the token bucket's rate: the protocol's refusal and the frame is dropped; after
  `flood_close_after` such frames the socket is closed 1008.
The protocol only words the refusals (`Refusals`); the limits live here once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import WSMsgType, web

from cryptex_wsgateway.fanout import Connection
from cryptex_wsgateway.protocol import TokenBucket
from cryptex_wsgateway.settings import WsSettings

CLOSE_POLICY = 1008  # slow consumer, flood, failed AUTH
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003  # binary frame
CLOSE_TOO_BIG = 1009  # frame over max_frame_bytes
CLOSE_INTERNAL = 1011


class Refusals(Protocol):
    """A protocol's error replies for the frames it refuses (sent before any close)."""

    def binary(self, conn: Connection) -> None: ...

    def too_big(self, conn: Connection, why: str) -> None: ...

    def rate_limited(self, conn: Connection, text: str) -> None: ...


async def close_socket(conn: Connection, code: int, reason: str) -> None:
    """Send a close frame with the reason, after any replies still queued; abort the socket
    if the client does not answer within 2 s (a slow client may never read it)."""
    conn.closing = True
    if conn.pending and not conn.transport.is_closing():  # replies queued before the close
        conn.transport.write(b"".join(conn.pending))
    conn.pending = []
    try:
        await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()[:120]), 2.0)
    except Exception:  # the client did not take the close frame: drop the socket
        conn.transport.abort()


async def inbound_texts(conn: Connection, ws: web.WebSocketResponse, settings: WsSettings,
                        refusals: Refusals) -> AsyncIterator[str]:
    """The text of every frame the limits let through (see the module doc)."""
    bucket = TokenBucket(settings.rate_per_s, settings.rate_burst, time.monotonic())
    refused = 0
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return
        if conn.closing:
            continue
        now = time.monotonic()
        conn.last_seen = now
        if msg.type == WSMsgType.BINARY:
            refusals.binary(conn)
            await close_socket(conn, CLOSE_UNSUPPORTED, "binary frame")
            return
        if len(msg.data) > settings.max_frame_bytes:
            why = f"frame over {settings.max_frame_bytes} bytes"
            refusals.too_big(conn, why)
            await close_socket(conn, CLOSE_TOO_BIG, why)
            return
        if not bucket.allow(now):
            refused += 1
            if refused >= settings.flood_close_after:
                await close_socket(conn, CLOSE_POLICY, "message rate limit exceeded")
                return
            refusals.rate_limited(conn, msg.data)
            continue
        yield msg.data
