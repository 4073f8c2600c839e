"""The API's listening socket: aiohttp's TCPSite with a cap on open connections.

Past `max_connections` a new connection is answered `503` (with `Retry-After`) and closed
before any request is read, so a flood of connections cannot exhaust file descriptors or
memory. The header-read timeout is aiohttp's keep-alive timer (`keepalive_timeout` on the
runner, set from `header_timeout_s`): a connection whose next request's headers are not
complete that long after it opened, or after its previous response, is closed.
"""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import web

_BODY = b'{"code":"ENGINE_UNAVAILABLE","message":"too many connections; retry"}'
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes. Whatever the client sends is read and dropped until it
    closes (or LINGER_S passes): closing with unread input would reset the connection and
    could discard the 503 before the client reads it."""

    LINGER_S = 1.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(self.LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self.transport.close()
        return False


class ConnectionCap:
    """A protocol factory: aiohttp's request handler while under the cap, else _Refuse."""

    def __init__(self, server: web.Server, max_connections: int) -> None:
        self.server = server
        self.max_connections = max_connections
        self.refused = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.max_connections:
            self.refused += 1
            return _Refuse()
        return self.server()


class CappedTCPSite(web.TCPSite):
    """TCPSite whose protocol factory is a ConnectionCap (same start/stop life cycle)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int,
                 backlog: int = 1024) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self._max_connections = max_connections

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            ConnectionCap(server, self._max_connections), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
