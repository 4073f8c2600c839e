"""A lean pipelined Redis connection for the order path.

redis-py's asyncio client costs ~60 us of CPU per command here (pool lock and condition,
per-command timeouts, packing in Python); the order path sends one script call per order.
This client keeps one connection, packs with hiredis, and writes everything asked for in
one event-loop tick in one write: concurrent orders share a round trip. Replies are parsed
by hiredis and matched to callers in order (Redis answers a connection in order).

Failure behaviour matches what the API expects from redis-py: every error is a
redis.exceptions.RedisError (ConnectionError, TimeoutError, ResponseError), answered 503
by the API. A lost connection fails every pending call; the next call reconnects. A call
unanswered after `timeout_s` closes the connection (its pipeline state is unknown), so
the pending calls fail. `evalsha` falls back to EVAL on NOSCRIPT (a restarted Redis).
Only plain TCP and unix-socket URLs are supported (`supports`); callers use redis-py for
anything else.

Used by the API's order path and by the engine's hot loop (its command XREAD and the
pipelined settle call). A blocking call (XREAD BLOCK) needs `timeout_s` above its block time.
`decode=True` answers str instead of bytes (as redis-py's decode_responses).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis
from redis.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_P = TypeVar("_P", bound=asyncio.Protocol)


def _pack(*args: Any) -> bytes:
    packed: bytes = hiredis.pack_command(args)  # (hiredis is untyped)
    return packed


def as_text(value: bytes | str) -> str:
    """A Redis reply string as str, whichever client (decoding or not) returned it."""
    return value.decode() if isinstance(value, bytes) else value


def supports(url: str) -> bool:
    """True when `url` is a plain redis:// or unix:// URL (no TLS)."""
    return url.startswith(("redis://", "unix://"))


class _Protocol(asyncio.Protocol):
    def __init__(self, encoding: str | None = None) -> None:
        self.reader = (hiredis.Reader(replyError=ResponseError, encoding=encoding) if encoding
                       else hiredis.Reader(replyError=ResponseError))
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.lost:
            raise RedisConnectionError("Redis connection lost")
        fut: asyncio.Future[Any] = self._loop.create_future()
        if not self.out:
            self._loop.call_soon(self._flush)
        self.out.append(packed)
        self.pending.append((fut, time.monotonic()))
        return fut

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.lost and out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while (reply := self.reader.gets()) is not False:
            if not pending:  # nothing asked: a protocol error; drop the connection
                self.fail(RedisConnectionError("unexpected reply from Redis"))
                return
            fut, _ = pending.popleft()
            if fut.done():
                continue
            if isinstance(reply, ResponseError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def fail(self, exc: Exception) -> None:
        self.lost = True
        while self.pending:
            fut, _ = self.pending.popleft()
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis connection lost: {exc!r}" if exc else "Redis connection closed"))


class _Endpoint:
    """Where and how to connect, from a redis:// or unix:// URL."""

    def __init__(self, url: str) -> None:
        opts = parse_url(url)
        self.unix = opts.get("connection_class") is UnixDomainSocketConnection
        self.path = opts.get("path")
        self.host = opts.get("host", "127.0.0.1")
        self.port = int(opts.get("port", 6379))
        self.db = int(opts.get("db", 0) or 0)
        self.username = opts.get("username")
        self.password = opts.get("password")

    async def connect(self, factory: Callable[[], _P]) -> tuple[asyncio.Transport, _P]:
        loop = asyncio.get_running_loop()
        if self.unix:
            return await loop.create_unix_connection(factory, self.path)
        return await loop.create_connection(factory, self.host, self.port)

    def handshake(self) -> list[bytes]:
        """AUTH and SELECT as the URL asks (none for the default user and db 0)."""
        out = []
        if self.password is not None:
            out.append(_pack("AUTH", *((self.username, self.password) if self.username else (self.password,))))
        if self.db:
            out.append(_pack("SELECT", self.db))
        return out


async def run_script(call: Callable[..., Awaitable[Any]], sha: str, source: str, keys: list[str],
                     args: list[Any]) -> Any:
    """EVALSHA through `call`; EVAL with the source when Redis does not know the script
    (a restarted Redis): the one fallback of every lean client."""
    try:
        return await call("EVALSHA", sha, len(keys), *keys, *args)
    except ResponseError as exc:
        if not str(exc).startswith("NOSCRIPT"):
            raise
    return await call("EVAL", source, len(keys), *keys, *args)


class RespClient:
    def __init__(self, url: str, timeout_s: float = 5.0, decode: bool = False) -> None:
        self.timeout_s = timeout_s
        self._encoding = "utf-8" if decode else None
        self._endpoint = _Endpoint(url)
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto
            try:
                async with asyncio.timeout(self.timeout_s):
                    _, proto = await self._endpoint.connect(lambda: _Protocol(self._encoding))
                    for command in self._endpoint.handshake():
                        await proto.send(command)
            except TimeoutError:
                raise RedisTimeoutError("timed out connecting to Redis") from None
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
            self._proto = proto
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch())
            return proto

    async def _watch(self) -> None:
        """Close a connection whose oldest call has waited longer than timeout_s."""
        while True:
            await asyncio.sleep(min(1.0, self.timeout_s / 2))
            proto = self._proto
            if proto is not None and proto.pending and time.monotonic() - proto.pending[0][1] > self.timeout_s:
                proto.fail(RedisTimeoutError("Redis did not answer in time"))

    async def call(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.lost:
            proto = await self._connect()
        return await proto.send(hiredis.pack_command(args))

    async def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send `commands` in one write, in order; their replies, a Redis error reply in
        place as a ResponseError (as redis-py's `execute(raise_on_error=False)`). A lost
        connection or a timeout raises."""
        proto = self._proto
        if proto is None or proto.lost:
            proto = await self._connect()
        futures = [proto.send(hiredis.pack_command(c)) for c in commands]
        results: list[Any] = []
        try:
            for fut in futures:
                try:
                    results.append(await fut)
                except ResponseError as exc:
                    results.append(exc)
        finally:
            for fut in futures:  # the connection failed: its other calls' errors are seen
                if fut.done() and not fut.cancelled():
                    fut.exception()
        return results

    async def evalsha(self, sha: str, source: str, keys: list[str], args: list[Any]) -> Any:
        return await run_script(self.call, sha, source, keys, args)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._proto is not None:
            self._proto.fail(RedisConnectionError("client closed"))


class _PushProtocol(asyncio.Protocol):
    """A subscribed connection: every reply is a push handed to `on_push`; `lost` resolves
    when the connection ends."""

    def __init__(self, on_push: Any, lost: asyncio.Future[None]) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.on_push = on_push
        self.lost = lost

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.on_push(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def subscribe(url: str, channels: list[str], on_push: Any, on_subscribed: Any,
                    timeout_s: float = 5.0) -> None:
    """Subscribe to `channels` on a connection of its own and hand every reply (the
    ["subscribe", ch, n] confirmations, then ["message", ch, data]) to `on_push`; calls
    `on_subscribed()` once every channel is confirmed; returns when the connection is
    lost (the caller resubscribes). Errors of the handshake raise."""
    endpoint = _Endpoint(url)
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    confirmed = 0
    replies: list[Any] = []

    def push(reply: Any) -> None:
        nonlocal confirmed
        if isinstance(reply, list) and reply and reply[0] == b"subscribe":
            confirmed += 1
            if confirmed == len(channels):
                on_subscribed()
        elif isinstance(reply, list) and reply and reply[0] == b"message":
            on_push(reply)
        else:  # handshake replies (OK, or an error)
            replies.append(reply)

    async with asyncio.timeout(timeout_s):
        transport, _ = await endpoint.connect(lambda: _PushProtocol(push, lost))
    try:
        transport.write(b"".join([*endpoint.handshake(), _pack("SUBSCRIBE", *channels)]))
        await lost
        errors = [r for r in replies if isinstance(r, ResponseError)]
        if errors:
            raise errors[0]
    finally:
        transport.close()
