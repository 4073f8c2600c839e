"""Fixtures of the crash-safety tests: a dedicated Redis with AOF (everysec) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import RedisServer, redis_server


@pytest.fixture(scope="module")
def aof_redis() -> Iterator[RedisServer]:
    with redis_server(appendonly=True) as server:
        yield server
