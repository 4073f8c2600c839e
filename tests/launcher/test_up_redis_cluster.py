"""`./cryptex up --redis-cluster` (issue 16, item 2): the local stack on a local Redis Cluster
of 3 primaries + 3 replicas under `<state dir>/redis-cluster/`, stopped with the stack.

Only that the stack comes up on the cluster and shuts it down cleanly is checked here (the
order path on a cluster is tested elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from cryptex_common import keys
from cryptex_common.markets import load_markets_yaml
from cryptex_launcher.processes import stack_processes
from cryptex_launcher.redis_cluster import _query, existing_ports, start_cluster
from cryptex_launcher.stack import log_tail
from tests.launcher.support import ROOT, UpEnv, kill_stack, new_state_dir, ready_status, remove_state, start_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def env() -> Iterator[UpEnv]:
    env = UpEnv(new_state_dir())
    yield env
    ports = existing_ports(env.state / "redis-cluster")
    if ports:  # the services are found by the cluster URL's last port, the nodes by their cwd
        kill_stack(UpEnv(env.state, redis_port=ports[-1]))
    remove_state(env)


def cluster_pids(env: UpEnv, ports: list[int]) -> dict[int, str]:
    """The live redis-server processes of the cluster (their cwd is their node directory)."""
    found: dict[int, str] = {}
    for port in ports:
        found.update({pid: cmd for pid, cmd in stack_processes(env.state, port).items() if "redis-server" in cmd})
    return found


def service_pids(env: UpEnv, ports: list[int]) -> dict[int, str]:
    """The stack's services: their CRYPTEX_REDIS_URL ends with the cluster's last port."""
    return {pid: cmd for pid, cmd in stack_processes(env.state, ports[-1]).items() if "redis-server" not in cmd}


def client_names(ports: list[int]) -> set[str]:
    names: set[str] = set()
    for port in ports:
        node = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            names.update(str(client.get("name", "")) for client in node.client_list())
        finally:
            node.close()
    return names


def registered_markets(ports: list[int]) -> set[str]:
    """The markets registered in the cluster (the fields of its `markets` hash)."""
    client = RedisCluster(host="127.0.0.1", port=ports[0], decode_responses=True)
    try:
        return set(client.hkeys(keys.MARKETS_HASH))
    finally:
        client.close()


def wait_ready(env: UpEnv, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ready_status(env) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    log = env.state / "logs" / "api.log"
    assert ready_status(env) == 200, f"/readyz answers {ready_status(env)}; {log}:\n{log_tail(log, 20)}"


# Outside the launcher, two services' Redis calls still cross slots: market registration
# (registry.register_market: one WATCH/MULTI over `markets`, a market's command stream and a
# PUBLISH, which redis-py's cluster pipeline refuses) and the DB processor (one XREADGROUP
# over every market's stream: "all keys must map to the same key slot"). Strict: this fails
# as soon as both are fixed, to drop the mark.
def test_up_redis_cluster_runs_the_stack_on_a_local_cluster_and_stops_it(env: UpEnv) -> None:
    up = start_up(env, "--redis-cluster")
    try:
        up.wait_up(180)
        ports = existing_ports(env.state / "redis-cluster")
        assert len(ports) == 6, ports
        url_line = next(line for line in up.lines if line.startswith("Cryptex is up"))
        assert "Redis Cluster redis+cluster://" in url_line, url_line
        assert all(f"127.0.0.1:{p}" in url_line for p in ports), url_line
        assert not (env.state / "redis").exists(), "no single Redis is started"
        assert len(cluster_pids(env, ports)) == 6
        for port in ports:
            assert "cluster_state:ok" in _query(port, "CLUSTER", "INFO")
        wait_ready(env)
        symbols = {s.symbol for s in load_markets_yaml((ROOT / "markets.yaml").read_text())}
        assert registered_markets(ports) == symbols
        names = client_names(ports)
        assert "cryptex-api" in names, names
        assert any(n.startswith("cryptex-engine") for n in names), names
    finally:
        code = up.stop()
    assert code == 0, up.output
    assert cluster_pids(env, ports) == {}, up.output
    assert service_pids(env, ports) == {}, up.output

    again = start_up(env, "--redis-cluster")  # on the same data: the same nodes, not a new cluster
    try:
        again.wait_up(180)
        assert "restarted on its data" in again.output, again.output
        assert existing_ports(env.state / "redis-cluster") == ports
        assert registered_markets(ports) == symbols
    finally:
        code = again.stop()
    assert code == 0, again.output
    assert cluster_pids(env, ports) == {}, again.output


def test_up_redis_cluster_is_refused_with_a_redis_url(env: UpEnv) -> None:
    """The user brought their own Redis: a local cluster would not be what the stack uses."""
    up = start_up(env.with_more(CRYPTEX_REDIS_URL="redis://127.0.0.1:1/0"), "--redis-cluster")
    assert up.wait_exit(30) != 0, up.output
    assert "CRYPTEX_REDIS_URL is set" in up.output, up.output
    assert not env.state.exists()


def test_a_failed_start_on_the_cluster_stops_every_node(env: UpEnv) -> None:
    """Like the single Redis: a start-up failure after the cluster is up (here registration
    refuses a market whose tick size changed) stops every node `up` started, by pid. The
    cluster is made beforehand on the state dir: `up` restarts it on its data."""
    spec = load_markets_yaml((ROOT / "markets.yaml").read_text())[0]
    old = spec.model_copy(update={"tick_size": "0.05"})
    cluster = start_cluster(env.state / "redis-cluster")
    try:
        client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        client.hset(keys.MARKETS_HASH, old.symbol, old.model_dump_json(by_alias=True))
        client.close()
    finally:
        cluster.stop()
    up = start_up(env, "--redis-cluster")
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 120
    while up.process.poll() is None and time.monotonic() < deadline:
        seen.update(cluster_pids(env, cluster.ports))
        time.sleep(0.05)
    assert up.wait_exit(60) != 0, up.output
    assert "restarted on its data" in up.output and "immutable" in up.output, up.output
    # ports, not pids: a node forks a child with its own title to rewrite its AOF
    started_ports = {cmd.split()[1] for cmd in seen.values()}
    assert len(started_ports) == 6, f"every node should have been started: {seen}\n{up.output}"
    assert cluster_pids(env, cluster.ports) == {}, up.output
