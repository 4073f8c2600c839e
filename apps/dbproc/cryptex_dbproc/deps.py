"""dbproc's two dependencies, PostgreSQL and Redis, each call retried while it is away.

Invariants:
- A transient failure (connection lost, server restarting, session killed) is retried with
  exponential backoff from 0.1 s, capped at `dbproc_retry_max_s`; each failure is logged
  and counted (`POSTGRES_ERRORS` / `REDIS_ERRORS`), and the first success after failures is
  logged once. Any other exception propagates at once (a data error is never retried).
- A database failure drops the connection (terminated); the next call opens a new one.
- When `stop` is set during a backoff wait, `Stopping` is raised: the caller abandons the
  work in progress (nothing was committed or acked by the failed call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import redis.exceptions as redis_errors
from prometheus_client import Counter
from redis.asyncio import Redis

from cryptex_common import metrics
from cryptex_dbproc.observability import SERVICE
from cryptex_dbproc.settings import DbprocSettings

log = logging.getLogger("cryptex_dbproc.processor")  # the name log lines always carried
T = TypeVar("T")

# Worth a retry: the server is away, restarting, overloaded, or killed our session.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)
# The data of one entry is refused: retrying the same entry can never succeed.
DATA_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)
TRANSIENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
)


class Stopping(Exception):
    """Raised out of a retry loop when the stop event is set while waiting."""


async def sleep_or_stop(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait `delay_s` or until `stop` is set, whichever comes first; True if stopping."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
    return stop.is_set()


class Dependencies:
    """The Redis client (owned by the caller) and the one PostgreSQL connection (owned here,
    opened lazily, replaced after a transient failure)."""

    def __init__(self, settings: DbprocSettings, redis: Redis, stop: asyncio.Event) -> None:
        self.settings = settings
        self.redis = redis
        self.stop = stop
        self.conn: asyncpg.Connection | None = None

    async def sleep_or_stop(self, delay_s: float) -> bool:
        return await sleep_or_stop(self.stop, delay_s)

    async def db(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self.settings.database_url, timeout=5)
        return self.conn

    async def drop_db(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _retry(
        self, what: str, fn: Callable[[], Awaitable[T]], errors: tuple[type[BaseException], ...],
        counter: Counter, name: str, on_failure: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """`fn()` until it returns; `errors` retried with backoff (see the module doc)."""
        delay_s, failures = 0.1, 0
        while True:
            try:
                result = await fn()
            except errors as exc:
                failures += 1
                counter.labels(SERVICE).inc()
                log.warning(
                    f"{name} unavailable, retrying",
                    extra={"op": what, "error": repr(exc), "attempt": failures,
                           "retry_in_s": delay_s},
                )
                if on_failure is not None:
                    await on_failure()
                if await self.sleep_or_stop(delay_s):
                    raise Stopping from exc
                delay_s = min(delay_s * 2, self.settings.dbproc_retry_max_s)
                continue
            if failures:
                log.info(f"{name} back", extra={"op": what, "failures": failures})
            return result

    async def with_db(self, what: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def call() -> T:
            return await fn(await self.db())

        return await self._retry(what, call, TRANSIENT_DB_ERRORS, metrics.POSTGRES_ERRORS,
                                 "database", self.drop_db)

    async def with_redis(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await self._retry(what, fn, TRANSIENT_REDIS_ERRORS, metrics.REDIS_ERRORS, "redis")

    async def ready(self) -> bool:
        if self.conn is None or self.conn.is_closed():
            return False
        return bool(await self.redis.ping())
