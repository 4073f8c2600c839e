"""Every service's redis-py client is made here: one place for the connection options.

Each connection names itself `cryptex-<service>` (CLIENT SETNAME, seen in `CLIENT LIST`
and `SLOWLOG`), so an operator can tell which process holds which connection. A client
with `max_connections` waits at most `wait_s` for a free pooled connection, then raises
(callers answer 503) instead of opening more. `decode=True` answers str instead of bytes;
only the engine, which never forwards raw payloads, uses it.
(The order path's pipelined connection is `cryptex_common.resp.RespClient`, not redis-py.)
"""

from __future__ import annotations

import redis.asyncio as aioredis


def connect(url: str, service: str, *, decode: bool = False, max_connections: int | None = None,
            wait_s: float | None = None, socket_timeout_s: float | None = None) -> aioredis.Redis:
    options: dict[str, object] = {"client_name": f"cryptex-{service}", "decode_responses": decode,
                                  "socket_timeout": socket_timeout_s}
    if max_connections is None:
        return aioredis.Redis.from_url(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=wait_s,
                                                    **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
