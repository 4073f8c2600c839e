"""Every service's redis-py client is made here: one place for the connection options.

Each connection names itself `cryptex-<service>` (CLIENT SETNAME, seen in `CLIENT LIST`
and `SLOWLOG`), so an operator can tell which process holds which connection. A client
with `max_connections` waits at most `wait_s` for a free pooled connection, then raises
(callers answer 503) instead of opening more. `decode=True` answers str instead of bytes;
only the engine, which never forwards raw payloads, uses it.
(The order path's pipelined connection is `cryptex_common.resp.RespClient`, not redis-py.)

Cluster mode (decision 0013): a `redis+cluster://host:port,host:port/` URL names one or
more seed nodes of a Redis Cluster; `connect` then answers redis-py's `RedisCluster`,
which routes each command to the primary owning its key's slot and follows redirections.
Its `max_connections` is per node and it has no pool wait (`wait_s` is ignored there).
Pub/sub is classic PUBLISH/SUBSCRIBE, broadcast cluster-wide: `pubsub_url` names one node
to subscribe on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEME = "redis+cluster://"
DEFAULT_PORT = 6379

# What `connect` answers: either client has the same command methods (`get`, `xadd`,
# `evalsha`, `pipeline`, `aclose`, ...). redis-py is untyped for mypy here (pyproject).
Client: TypeAlias = aioredis.Redis | RedisCluster


def _host_port(seed: str) -> tuple[str, int]:
    if seed.startswith("["):  # [ipv6]:port
        host, _, rest = seed[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:] else DEFAULT_PORT
    host, sep, port = seed.rpartition(":")
    if not sep:
        return seed, DEFAULT_PORT
    return host, int(port) if port else DEFAULT_PORT


def cluster_nodes(url: str) -> list[tuple[str, int]] | None:
    """The seed nodes of a `redis+cluster://h1:p1,h2:p2/` URL (port 6379 when left out),
    in the URL's order; None for any other URL. A URL naming no node raises ValueError."""
    if not url.startswith(CLUSTER_SCHEME):
        return None
    netloc = url[len(CLUSTER_SCHEME):].split("/", 1)[0]
    seeds = [_host_port(s.strip()) for s in netloc.split(",") if s.strip()]
    if not seeds:
        raise ValueError(f"no cluster node in {url!r}")
    return seeds


def _format_node(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cluster_url(nodes: Sequence[tuple[str, int]]) -> str:
    """The `redis+cluster://` URL of `nodes` (the inverse of `cluster_nodes`)."""
    if not nodes:
        raise ValueError("a cluster URL needs at least one node")
    return CLUSTER_SCHEME + ",".join(_format_node(h, p) for h, p in nodes) + "/"


def resolve_url(url: str, cluster_nodes_env: str | None) -> str:
    """`CRYPTEX_REDIS_CLUSTER_NODES` ("host:port,host:port"), when set and not blank, wins
    over `CRYPTEX_REDIS_URL`: it answers the cluster URL of those nodes; otherwise `url`."""
    if cluster_nodes_env and cluster_nodes_env.strip():
        nodes = cluster_nodes(CLUSTER_SCHEME + cluster_nodes_env.strip())
        assert nodes is not None
        return cluster_url(nodes)
    return url


def pubsub_url(url: str) -> str:
    """Where to SUBSCRIBE: for a cluster URL the plain URL of its first seed (classic
    PUBLISH reaches every node of a cluster); any other URL unchanged."""
    nodes = cluster_nodes(url)
    if nodes is None:
        return url
    host, port = nodes[0]
    return f"redis://{_format_node(host, port)}/0"


def pubsub_urls(url: str) -> list[str]:
    """Every place to SUBSCRIBE, in the order to try them: each seed of a cluster URL (a
    subscriber whose node died moves on to the next); any other URL alone."""
    nodes = cluster_nodes(url)
    if nodes is None:
        return [url]
    return [f"redis://{_format_node(host, port)}/0" for host, port in nodes]


def connect(url: str, service: str, *, decode: bool = False, max_connections: int | None = None,
            wait_s: float | None = None, socket_timeout_s: float | None = None) -> Client:
    options: dict[str, object] = {"client_name": f"cryptex-{service}", "decode_responses": decode,
                                  "socket_timeout": socket_timeout_s}
    nodes = cluster_nodes(url)
    if nodes is not None:
        if max_connections is not None:
            options["max_connections"] = max_connections  # per node
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **options)
    if max_connections is None:
        return aioredis.Redis.from_url(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=wait_s,
                                                    **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
