"""Shared fixtures and the test lanes.

Fixtures: one real Redis and one real PostgreSQL per test session, on free ports. Tests that
need isolation take `redis_client` (the Redis database is flushed before each test) or
create their own database on `postgres`.

Lanes: every test gets exactly one of the markers `unit`, `integration`, `e2e`, and `slow`
on top where it is long-running (README, "Test lanes"). `pytest_collection_modifyitems`
assigns them from where a test lives and which fixtures it takes:

- a marker the test (or its module's `pytestmark`) already carries wins;
- `e2e`: the directories and files of `E2E` (the services as processes, the whole
  exchange, a browser, images, the Binance facades), and any directory starting `binance`;
- `unit`: the directories and files of `UNIT` (but not of `NOT_UNIT`), unless the test
  takes a fixture that starts or reaches a server (`SERVER_FIXTURES`);
- `integration`: everything else, so a new directory is never `unit` by accident;
- `slow` besides: the directories and files of `SLOW`.

A `unit` test is also held to it while it runs: opening a network connection fails it (a
unit test that needs a server belongs in `integration`).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cryptex_launcher.redis_cluster import LocalCluster
from tests.support.redis_cluster import redis_cluster
from tests.support.servers import PostgresServer, RedisServer, postgres_server, redis_server

TESTS = Path(__file__).resolve().parent
LANES = ("unit", "integration", "e2e")

# Paths relative to tests/: a directory ("engine/") covers everything below it.
UNIT = (
    "test_boundaries.py",
    "support/",
    "engine/",
    "api/test_validation.py",
    "api/test_hostile_input.py",
    "api/test_fast_validation.py",
    "dbproc/test_candles.py",
    "dbproc/test_decode.py",
    "wsgateway/test_domain.py",
    "deploy/test_crd.py",
    "deploy/test_kind_config.py",
    "observability/test_metric_names.py",
    "operator/test_render.py",
)
NOT_UNIT = ("engine/test_hot_loop.py", "engine/test_service_commands.py")  # servers in UNIT dirs
E2E = (
    "e2e/",
    "chaos/",
    "launcher/",
    "browser/",
    "images/",
    "wsgateway/test_e2e.py",
    "wsgateway/test_private_e2e.py",
    "observability/test_scrape_e2e.py",
)
E2E_PREFIXES = ("binance",)  # tests/binance/, tests/binance_ws/, ...
SLOW = ("chaos/", "launcher/", "browser/", "images/", "api/test_schemathesis.py", "api/test_flood.py")
# Fixtures that start or reach a real server: a test taking one is never `unit`.
SERVER_FIXTURES = frozenset({"redis_srv", "redis_client", "postgres", "db_url", "cluster"})


def _matches(rel: str, paths: tuple[str, ...]) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in paths)


def lane_of(rel: str, fixtures: set[str] | frozenset[str]) -> str:
    """The lane of a test at `rel` (its file, relative to tests/) taking `fixtures`."""
    if _matches(rel, E2E) or rel.split("/", 1)[0].startswith(E2E_PREFIXES):
        return "e2e"
    if _matches(rel, UNIT) and not _matches(rel, NOT_UNIT) and not SERVER_FIXTURES & set(fixtures):
        return "unit"
    return "integration"


def is_slow(rel: str) -> bool:
    return _matches(rel, SLOW) or rel.split("/", 1)[0].startswith(E2E_PREFIXES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = item.path.resolve().relative_to(TESTS).as_posix()
        except ValueError:
            continue  # not under tests/
        if not any(item.get_closest_marker(lane) for lane in LANES):
            item.add_marker(lane_of(rel, set(getattr(item, "fixturenames", ()))))
        if is_slow(rel) and not item.get_closest_marker("slow"):
            item.add_marker("slow")


class UnitLaneViolation(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _unit_tests_stay_off_the_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A `unit` test may not connect anywhere over the network (AF_UNIX aside)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    tried: list[Any] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(sock: socket.socket, address: Any) -> None:
        if sock.family != socket.AF_UNIX:
            tried.append(address)
            raise UnitLaneViolation(f"a unit test connected to {address!r}: mark it integration")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        guard(sock, address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        guard(sock, address)
        return connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield
    if tried:  # raised inside the test, but code under test may have swallowed it
        pytest.fail(f"a unit test connected to {tried[0]!r}: it belongs in the integration lane")


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def redis_client(redis_srv: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_srv.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster (3 primaries + 3 replicas on free loopback ports) for one test
    module: a module may kill and restart its nodes."""
    with redis_cluster() as started:
        yield started
