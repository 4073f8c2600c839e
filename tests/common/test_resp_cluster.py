"""The order path's client on a real Redis Cluster (3 primaries + 3 replicas started by the
launcher): hash slots as Redis computes them, routing by key, pipelines answered in order
across nodes, redirections followed, a failover surfaced once and then served by the
promoted replica, and a cluster restarted on its own data without being created again."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cryptex_common import redis_client
from cryptex_common.resp import RespClient
from cryptex_common.resp_cluster import ClusterRespClient, command_key, key_slot, order_client, wait_replicas
from cryptex_launcher.redis_cluster import LocalCluster, _query, parse_nodes, start_cluster
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[ClusterRespClient]:
    c = ClusterRespClient(cluster.url, timeout_s=3.0)
    yield c
    await c.aclose()


def owner_port(cluster: LocalCluster, key: str) -> int:
    """The primary serving `key`'s slot, as the cluster itself says."""
    slot = key_slot(key)
    for node_line in _query(cluster.primary_ports()[0], "CLUSTER", "NODES").splitlines():
        fields = node_line.split()
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        for spec in fields[8:]:
            lo, _, hi = spec.partition("-")
            if not lo.startswith("[") and int(lo) <= slot <= int(hi or lo):
                return int(fields[1].split("@")[0].rpartition(":")[2])
    raise AssertionError(f"no primary serves slot {slot}")


def keys_on_every_primary(cluster: LocalCluster, prefix: str) -> list[str]:
    """One key per primary (so a command per key reaches every node)."""
    found: dict[int, str] = {}
    for i in range(1000):
        key = f"{prefix}:{{ub:{i}}}:k"
        found.setdefault(owner_port(cluster, key), key)
        if len(found) == 3:
            return [found[p] for p in sorted(found)]
    raise AssertionError("keys did not spread over 3 primaries")


def varied_keys() -> list[bytes | str]:
    rng = random.Random(16)
    keys: list[bytes | str] = ["", "a", "foo", "{}", "{}x", "x{}", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}",
                               "{user1000}.following", "{user1000}.followers", "foo{bar", "foo}bar{", "}{x}",
                               "{ub:7}", "balance:{ub:7}:123", "MESSAGES:{m:SOL_USDC}", "ключ", "{ключ}x",
                               "😀{😀}", "中文{}键", b"\xff\xfe\x00", b"{\x00}", b"\x80{\xff}\x01"]
    alphabet = "ab{}:_-xyzé€😀0123456789"
    while len(keys) < 200:
        keys.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))))
    keys.extend(rng.randbytes(rng.randint(1, 16)) for _ in range(20))
    return keys


async def test_key_slot_is_cluster_keyslot(client: ClusterRespClient) -> None:
    keys = varied_keys()
    answers = await client.pipeline(*[("CLUSTER", "KEYSLOT", k) for k in keys])
    assert [key_slot(k) for k in keys] == answers
    assert len(set(answers)) > 150  # the keys really are spread
    assert key_slot(12345) == key_slot("12345")


def test_command_key_picks_the_routed_key() -> None:
    assert command_key(("EVALSHA", "abc", 2, "k1", "k2", "arg")) == "k1"
    assert command_key(("EVAL", "return 1", 0, "arg")) is None
    assert command_key(("XREAD", "COUNT", 10, "BLOCK", 5, "STREAMS", "s1", "0-0")) == "s1"
    assert command_key((b"xread", b"streams", b"s2", b"$")) == b"s2"
    assert command_key(("PUBLISH", "ch", "msg")) is None
    assert command_key(("WAIT", 1, 100)) is None
    assert command_key(("GET", "k")) == "k"


async def test_call_and_pipeline_reach_each_keys_primary(cluster: LocalCluster, client: ClusterRespClient) -> None:
    keys = keys_on_every_primary(cluster, "route")
    for i, key in enumerate(keys):
        assert await client.call("SET", key, f"v{i}") == b"OK"
    for i, key in enumerate(keys):  # stored on the key's own primary, not anywhere else
        owner = RespClient(f"redis://127.0.0.1:{owner_port(cluster, key)}/0")
        try:
            assert await owner.call("GET", key) == f"v{i}".encode()
        finally:
            await owner.aclose()
    commands = [("GET", keys[2]), ("INCR", keys[0]), ("SET", keys[1], "w"), ("GET", keys[1]),
                ("GET", keys[0]), ("PING",), ("RPUSH", keys[2], "x")]
    replies = await client.pipeline(*commands)
    assert replies[0] == b"v2" and replies[2] == b"OK" and replies[3] == b"w" and replies[4] == b"v0"
    assert replies[5] == b"PONG"
    assert isinstance(replies[1], ResponseError) and "not an integer" in str(replies[1])
    assert isinstance(replies[6], ResponseError) and "WRONGTYPE" in str(replies[6])
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await client.call("LPUSH", keys[0], "x")


async def test_ordered_within_a_node(cluster: LocalCluster, client: ClusterRespClient) -> None:
    key = "order:{ub:1}:list"
    await client.call("DEL", key)
    replies = await client.pipeline(*[("RPUSH", key, i) for i in range(50)], ("LRANGE", key, 0, -1))
    assert replies[:50] == list(range(1, 51))
    assert replies[50] == [str(i).encode() for i in range(50)]


async def test_evalsha_falls_back_to_eval_on_each_node(cluster: LocalCluster, client: ClusterRespClient) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"  # no such script: NOSCRIPT everywhere
    for key in keys_on_every_primary(cluster, "script"):
        assert await client.evalsha(sha, SCRIPT, [key], ["s"]) == b"s"
    assert await client.evalsha(sha, "return 7", [], []) == 7
    with pytest.raises(ResponseError):
        await client.evalsha(sha, "return redis.call('NOSUCHCOMMAND')", ["script:x"], [])


async def test_xread_is_routed_by_its_stream(cluster: LocalCluster, client: ClusterRespClient) -> None:
    streams = keys_on_every_primary(cluster, "stream")
    for s in streams:
        await client.call("XADD", s, "*", "f", s)
    for s in streams:
        reply = await client.call("XREAD", "COUNT", 1, "STREAMS", s, "0-0")
        assert reply[0][0] == s.encode() and reply[0][1][0][1] == [b"f", s.encode()]


async def test_a_stale_table_follows_moved(cluster: LocalCluster, client: ClusterRespClient) -> None:
    keys = keys_on_every_primary(cluster, "moved")
    await client.call("PING")
    assert client._slots is not None
    wrong = ("127.0.0.1", owner_port(cluster, keys[0]))
    client._slots = [wrong] * len(client._slots)  # everything "owned" by one node
    replies = await client.pipeline(*[("SET", k, k) for k in keys], *[("GET", k) for k in keys])
    assert replies == [b"OK"] * 3 + [k.encode() for k in keys]
    assert client._slots[key_slot(keys[1])] == ("127.0.0.1", owner_port(cluster, keys[1]))


async def test_a_migrating_slot_is_followed_by_ask(cluster: LocalCluster, client: ClusterRespClient) -> None:
    key = "ask:{migrating}:k"
    slot, source = key_slot(key), owner_port(cluster, key)
    target = next(p for p in cluster.primary_ports() if p != source)
    ids = {n.port: n.id for n in parse_nodes(_query(source, "CLUSTER", "NODES"))}
    await client.call("DEL", key)
    _query(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
    _query(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
    try:  # the key is not on the source: the source answers ASK target
        assert await client.call("SET", key, "asked") == b"OK"
        on_target = RespClient(f"redis://127.0.0.1:{target}/0")
        try:
            assert await on_target.pipeline(("ASKING",), ("GET", key)) == [b"OK", b"asked"]
            await on_target.pipeline(("ASKING",), ("DEL", key))
        finally:
            await on_target.aclose()
    finally:
        _query(source, "CLUSTER", "SETSLOT", str(slot), "STABLE")
        _query(target, "CLUSTER", "SETSLOT", str(slot), "STABLE")
    assert owner_port(cluster, key) == source


async def test_wait_replicas_counts_the_nodes_replica(cluster: LocalCluster, client: ClusterRespClient) -> None:
    key = "wait:{ub:3}:k"
    await client.call("SET", key, "1")
    assert await wait_replicas(client, key, 1, 2000) == 1
    single = RespClient(f"redis://127.0.0.1:{owner_port(cluster, key)}/0")
    try:
        await single.call("SET", key, "2")
        assert await wait_replicas(single, key, 1, 2000) == 1
    finally:
        await single.aclose()


def test_order_client_by_url(cluster: LocalCluster) -> None:
    assert isinstance(order_client(cluster.url, 1.0), ClusterRespClient)
    assert type(order_client("redis://127.0.0.1:6379/0", 1.0)) is RespClient


async def test_redis_py_cluster_client_from_the_factory(cluster: LocalCluster) -> None:
    raw = redis_client.connect(cluster.url, "test", max_connections=4)
    text = redis_client.connect(cluster.url, "test", decode=True)
    keys = keys_on_every_primary(cluster, "factory")
    try:
        for key in keys:
            await raw.set(key, key)
        assert [await text.get(k) for k in keys] == keys
        assert [await raw.get(k) for k in keys] == [k.encode() for k in keys]
        names = _query(owner_port(cluster, keys[0]), "CLIENT", "LIST")
        assert "name=cryptex-test" in names
    finally:
        await raw.aclose()
        await text.aclose()


async def test_pubsub_url_receives_what_any_node_publishes(cluster: LocalCluster, client: ClusterRespClient) -> None:
    sub = aioredis.Redis.from_url(redis_client.pubsub_url(cluster.url))
    pubsub = sub.pubsub()
    try:
        await pubsub.subscribe("cluster-channel")
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        for port in cluster.primary_ports():
            publisher = RespClient(f"redis://127.0.0.1:{port}/0")
            await publisher.call("PUBLISH", "cluster-channel", str(port))
            await publisher.aclose()
        got: set[int] = set()
        while len(got) < 3:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
            assert message is not None, f"only {got} arrived"
            got.add(int(message["data"]))
        assert got == set(cluster.primary_ports())
    finally:
        await pubsub.aclose()
        await sub.aclose()


async def test_failover_raises_once_then_serves_from_the_promoted_replica(cluster: LocalCluster,
                                                                          client: ClusterRespClient) -> None:
    key = "failover:{ub:9}:k"
    primary = owner_port(cluster, key)
    replica = cluster.replica_of(primary)
    assert replica is not None
    await client.call("SET", key, "kept")
    assert await wait_replicas(client, key, 1, 2000) == 1
    other = next(k for k in keys_on_every_primary(cluster, "other") if owner_port(cluster, k) != primary)
    cluster.kill(primary)
    try:
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await client.call("GET", key)  # the slot table still names the dead primary
        assert await client.call("SET", other, "1") == b"OK"  # other shards are unaffected

        async def served() -> bool:
            return bool(await client.call("GET", key) == b"kept")

        check: Callable[[], Awaitable[bool] | bool] = served
        await eventually(check, 15.0, interval_s=0.2, ignoring=(RedisConnectionError, RedisTimeoutError,
                                                                  ResponseError))
        assert client._slots is not None and client._slots[key_slot(key)] == ("127.0.0.1", replica)
        assert replica in cluster.primary_ports() and primary not in cluster.primary_ports()
        assert await client.call("SET", key, "after") == b"OK"
    finally:
        cluster.restart(primary)
        cluster.wait_ok(60.0)  # the old primary rejoins as the new one's replica
    assert cluster.replica_of(replica) == primary


async def test_restart_on_its_own_data_does_not_create_again(cluster: LocalCluster) -> None:
    key = "restart:{ub:5}:k"
    first = ClusterRespClient(cluster.url)
    try:
        await first.call("SET", key, "persisted")
    finally:
        await first.aclose()
    ids = {n.port: n.id for n in cluster.nodes()}
    cluster.stop()
    again = start_cluster(cluster.base_dir, cluster.node_timeout_ms)
    cluster.processes = again.processes  # the module's fixture stops them
    assert not again.created and sorted(again.ports) == sorted(cluster.ports)
    assert {n.port: n.id for n in again.nodes()} == ids
    second = ClusterRespClient(again.url)
    try:
        assert await second.call("GET", key) == b"persisted"
    finally:
        await second.aclose()


def test_cluster_urls_round_trip() -> None:
    url = "redis+cluster://10.0.0.1:7000,10.0.0.2,[::1]:7002/"
    nodes = redis_client.cluster_nodes(url)
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert redis_client.cluster_nodes(redis_client.cluster_url(nodes)) == nodes
    assert redis_client.cluster_nodes("redis://127.0.0.1:6379/0") is None
    assert redis_client.resolve_url("redis://r:6379/0", "a:1, b:2") == "redis+cluster://a:1,b:2/"
    assert redis_client.resolve_url("redis://r:6379/0", " ") == "redis://r:6379/0"
    assert redis_client.resolve_url("redis://r:6379/0", None) == "redis://r:6379/0"
    assert redis_client.pubsub_url(url) == "redis://10.0.0.1:7000/0"
    assert redis_client.pubsub_url("redis://r:6379/3") == "redis://r:6379/3"
