"""The API's listening socket: aiohttp's TCPSite with a cap on open connections, whose
own error answers are the API's JSON errors.

Past `max_connections` a new connection is answered `503` (with `Retry-After`) and closed
before any request is read, so a flood of connections cannot exhaust file descriptors or
memory. The header-read timeout is aiohttp's keep-alive timer (`keepalive_timeout` on the
runner, set from `header_timeout_s`): a connection whose next request's headers are not
complete that long after it opened, or after its previous response, is closed.

A request aiohttp's parser refuses before any route sees it (a request line or header over
8190 bytes, a malformed request) is answered with the API's JSON error (`BAD_REQUEST`,
field `request`) instead of aiohttp's text/plain one, which echoed the request's bytes.
"""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import web, web_protocol
from aiohttp.web_request import BaseRequest

from cryptex_api.responses import error_response
from cryptex_common.errors import CryptexError, ErrorCode

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


class JsonErrorRequestHandler(web_protocol.RequestHandler):
    """aiohttp's request handler whose own error answers are JSON (it still logs the error
    and closes the connection, as aiohttp does)."""

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if output began
        if status >= 500:
            err = CryptexError(ErrorCode.INTERNAL, "internal error")
        else:
            err = CryptexError(ErrorCode.BAD_REQUEST, "the request line or headers could not be read "
                               "(too long, at most 8190 bytes each, or malformed)", "request")
        response = error_response(err)
        response.set_status(status)
        response.force_close()
        return response


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
        # web.Server.__call__ builds aiohttp's RequestHandler from these same arguments
        return JsonErrorRequestHandler(self.server, loop=self.server._loop, **self.server._kwargs)


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
