"""The API as a real process (with its engines) against a real Redis on a free port, plus a
raw-socket HTTP helper for requests no well-behaved client would send."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from cryptex_launcher.stack import Stack
from tests.e2e.conftest import make_stack, register_all
from tests.support.servers import redis_server


@contextlib.contextmanager
def api_stack(database_url: str | None = None, **env: str) -> Iterator[Stack]:
    """A fresh Redis, the markets of markets.yaml, the API and one engine per market; with
    `database_url`, dbproc too (it creates the history tables) and history enabled."""
    with redis_server() as redis:
        if database_url:
            stack = make_stack(redis.url, database_url, with_dbproc=True, extra_env=env)
        else:
            stack = make_stack(redis.url, extra_env={"CRYPTEX_HISTORY_ENABLED": "false", **env})
        asyncio.run(register_all(redis.url, stack))
        stack.start_all()
        try:
            yield stack
        finally:
            codes = stack.stop_all()
            shutil.rmtree(stack.state_dir, ignore_errors=True)
            assert codes.get("api") == 0, f"api did not stop cleanly: {codes}"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        doc = orjson.loads(self.body)
        assert isinstance(doc, dict), doc
        return doc


async def raw_request(port: int, method: str, target: bytes | str,
                      headers: list[tuple[bytes, bytes]] | None = None,
                      body: bytes = b"", timeout_s: float = 10.0) -> RawResponse:
    """One HTTP/1.1 request written byte for byte (headers may be any bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        path = target.encode() if isinstance(target, str) else target
        lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1",
                 b"Connection: close", b"Content-Length: " + str(len(body)).encode()]
        lines += [name + b": " + value for name, value in headers or []]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), parsed, payload)
