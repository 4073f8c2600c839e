"""Per-socket send queues and the flush that writes them: the gateway's hot path.

A frame is encoded once (`protocol.encode_text_frame`) and the same bytes object is queued
on every subscribed socket. Frames queued for one socket between two flushes go out in a
single `transport.write` (one syscall per socket per flush, however many updates).

Invariants:
- frames reach a socket in the order they were queued, whole (writes are made only from
  the event loop thread, each one a concatenation of complete frames);
- a socket's queue is bounded twice: at most `max_queue` frames waiting for the next flush,
  and at most `max_buffer_bytes` already handed to the transport but not yet taken by the
  kernel. Past either bound the socket is marked slow, its queue is dropped, `on_slow` is
  called once (the gateway closes it with a reason) and nothing more is queued for it; no
  other socket waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any


class Connection:
    """One client socket as the fan-out sees it."""

    __slots__ = ("closing", "id", "last_seen", "pending", "transport", "user_id", "ws")

    def __init__(self, conn_id: int, ws: Any, transport: asyncio.Transport, now: float) -> None:
        self.id = conn_id
        self.last_seen = now  # monotonic time of the last inbound message
        self.ws = ws
        self.transport = transport
        self.pending: list[bytes] = []
        self.closing = False
        self.user_id: str | None = None

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return self is other


class Hub:
    def __init__(
        self,
        max_queue: int,
        max_buffer_bytes: int,
        coalesce_s: float,
        on_slow: Callable[[Connection, str], None],
    ) -> None:
        self.max_queue = max_queue
        self.max_buffer_bytes = max_buffer_bytes
        self.coalesce_s = coalesce_s
        self.on_slow = on_slow
        self._dirty: dict[Connection, None] = {}
        self._scheduled = False

    def send(self, conn: Connection, frame: bytes) -> None:
        if conn.closing:
            return
        conn.pending.append(frame)
        if len(conn.pending) > self.max_queue:
            self._slow(conn, f"send queue over {self.max_queue} messages")
            return
        self._dirty[conn] = None
        self._schedule()

    def broadcast(self, conns: Iterable[Connection], frame: bytes) -> int:
        """Queue one pre-encoded frame on every socket; returns how many took it."""
        sent = 0
        limit = self.max_queue
        dirty = self._dirty
        for conn in conns:
            if conn.closing:
                continue
            pending = conn.pending
            pending.append(frame)
            if len(pending) > limit:
                self._slow(conn, f"send queue over {limit} messages")
                continue
            dirty[conn] = None
            sent += 1
        if sent:
            self._schedule()
        return sent

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, {}
        limit = self.max_buffer_bytes
        for conn in dirty:
            pending = conn.pending
            if conn.closing or not pending:
                continue
            transport = conn.transport
            if transport.is_closing():
                pending.clear()
                continue
            if transport.get_write_buffer_size() > limit:
                self._slow(conn, f"more than {limit} bytes unsent")
                continue
            conn.pending = []
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _schedule(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        if self.coalesce_s > 0:
            loop.call_later(self.coalesce_s, self.flush)
        else:
            loop.call_soon(self.flush)

    def _slow(self, conn: Connection, why: str) -> None:
        conn.closing = True
        conn.pending = []
        self.on_slow(conn, why)
