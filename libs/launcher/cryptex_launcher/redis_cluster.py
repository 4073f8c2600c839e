"""A local Redis Cluster of 3 primaries and 3 replicas on loopback (decision 0013), for
`./cryptex up --redis-cluster` and the tests.

Layout: one directory per node, `<base dir>/<port>/`, holding its `nodes.conf` (the
cluster's view, written by Redis), its AOF (appendfsync everysec) and `redis.log`. The
directory names are the ports, so a second start on the same base directory finds its
ports again; a node must come back on its old port, since the others know it by it.

Invariants:
- `--cluster create` runs only on a fresh base directory: when every node directory has a
  `nodes.conf`, the servers are started on their data and the cluster re-forms by itself.
- `start_cluster` returns only once every running node answers `cluster_state:ok`, the
  cluster has 3 primaries owning all 16384 slots, and each primary has a replica in sync;
  on failure every server it started is stopped.
- The servers run in their own sessions (Ctrl-C reaches the launcher, which stops them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptex_common.redis_client import cluster_url
from cryptex_launcher.ports import free_port_pair, reserve
from cryptex_launcher.stack import StartError, log_tail, stop_process, wait_for_port

PRIMARIES = 3
NODES = 6  # each primary with one replica
BUS_PORT_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000
HOST = "127.0.0.1"


def _redis_binary(name: str) -> str:
    binary = shutil.which(name)
    if not binary:
        raise RuntimeError(f"{name} not found: install it (apt-get install -y redis-server)")
    return binary


def _ask(port: int, *args: str, timeout_s: float = 2.0) -> Any:
    """One command to the node on `port`, its reply as redis-py parses it (raises redis errors)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(host=HOST, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                         retry=Retry(NoBackoff(), 0), decode_responses=True)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def _query(port: int, *args: str, timeout_s: float = 2.0) -> str:
    """One command to the node on `port`, its reply as text (raises redis errors)."""
    reply = _ask(port, *args, timeout_s=timeout_s)
    return reply if isinstance(reply, str) else str(reply)


def online_replicas(port: int) -> int:
    """How many replicas of the primary on `port` are in sync with it (`state=online`;
    one still loading its first copy counts in `connected_slaves` but cannot ack a WAIT)."""
    info = _ask(port, "INFO", "replication")
    return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
               and v.get("state") == "online")


@dataclass(frozen=True)
class NodeInfo:
    """One line of `CLUSTER NODES`."""
    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: int  # how many slot ranges/entries it lists

    @property
    def primary(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags and "fail?" not in self.flags

    @property
    def healthy(self) -> bool:
        return self.connected and "fail" not in self.flags and "fail?" not in self.flags


def parse_nodes(text: str) -> list[NodeInfo]:
    """`CLUSTER NODES` output as NodeInfo records (address `ip:port@cport[,hostname]`)."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        port = int(fields[1].split("@", 1)[0].rpartition(":")[2] or 0)
        nodes.append(NodeInfo(fields[0], port, frozenset(fields[2].split(",")),
                              None if fields[3] == "-" else fields[3], fields[7] == "connected",
                              len(fields) - 8))
    return nodes


@dataclass
class LocalCluster:
    """The running cluster: `ports` (all six nodes), `processes` by port (those this
    process started and has not killed). `created` is False when it came up on old data."""
    base_dir: Path
    ports: list[int]
    node_timeout_ms: int
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    created: bool = False

    @property
    def url(self) -> str:
        return cluster_url([(HOST, p) for p in self.ports])

    def node_dir(self, port: int) -> Path:
        return self.base_dir / str(port)

    def running(self) -> list[int]:
        return [p for p in self.ports if p in self.processes and self.processes[p].poll() is None]

    def nodes(self) -> list[NodeInfo]:
        """The cluster's nodes as the first running node that answers sees them."""
        error: Exception = RuntimeError("no cluster node is running")
        for port in self.running():
            try:
                return parse_nodes(_query(port, "CLUSTER", "NODES"))
            except Exception as exc:  # a node just killed or still loading: ask the next
                error = exc
        raise error

    def primary_ports(self) -> list[int]:
        """Ports of the primaries serving slots (a failed primary is not one), sorted."""
        return sorted(n.port for n in self.nodes() if n.primary and n.slots > 0)

    def replica_of(self, port: int) -> int | None:
        """The port of a healthy replica of the primary on `port`, or None."""
        nodes = self.nodes()
        ids = [n.id for n in nodes if n.port == port]
        replicas = sorted(n.port for n in nodes if ids and n.master_id == ids[0] and n.healthy)
        return replicas[0] if replicas else None

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (no AOF flush beyond what everysec wrote)."""
        proc = self.processes.pop(port)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, port: int, timeout_s: float = 60.0) -> None:
        """Start the node on `port` again on its data (it rejoins; a former primary whose
        replica took over comes back as that one's replica)."""
        if port in self.running():
            raise RuntimeError(f"node {port} is running")
        self.processes[port] = _start_node(self.node_dir(port), port, self.node_timeout_ms)
        wait_for_port(port, timeout_s)

    def stop(self) -> None:
        """SIGTERM every node (each writes its AOF and nodes.conf), then wait for all."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            stop_process(proc, 30.0)
        self.processes.clear()

    def wait_ok(self, timeout_s: float = 60.0, replicas: bool = True) -> None:
        """Until every running node says `cluster_state:ok`, 3 healthy primaries own all
        slots and (with `replicas`) each has a replica in sync. Raises StartError."""
        deadline = time.monotonic() + timeout_s
        last = "not asked yet"
        while time.monotonic() < deadline:
            try:
                last = self._not_ok(replicas)
            except Exception as exc:  # nodes still loading or joining
                last = repr(exc)
            if not last:
                return
            time.sleep(0.1)
        logs = "\n".join(f"{p}: {log_tail(self.node_dir(p) / 'redis.log', 3)}" for p in self.ports)
        raise StartError(f"Redis Cluster not ready after {timeout_s}s: {last}\n{logs}")

    def _not_ok(self, replicas: bool) -> str:
        """Why the cluster is not ready yet ("" when it is)."""
        for port in self.running():
            if "cluster_state:ok" not in _query(port, "CLUSTER", "INFO"):
                return f"node {port}: cluster_state not ok"
        primaries = self.primary_ports()
        if len(primaries) != PRIMARIES:
            return f"primaries {primaries}"
        for port in primaries:
            if replicas and online_replicas(port) < 1:
                return f"primary {port} has no replica in sync"
            if replicas and self.replica_of(port) is None:
                return f"primary {port} has no healthy replica in CLUSTER NODES"
        return ""


def _start_node(directory: Path, port: int, node_timeout_ms: int) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [_redis_binary("redis-server"), "--port", str(port), "--bind", HOST, "--dir", str(directory),
         "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
         "--cluster-node-timeout", str(node_timeout_ms), "--appendonly", "yes",
         "--appendfsync", "everysec", "--save", "", "--repl-diskless-sync-delay", "0",
         "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def existing_ports(base_dir: Path) -> list[int]:
    """Ports of the node directories under `base_dir` that hold a `nodes.conf`, sorted."""
    if not base_dir.is_dir():
        return []
    return sorted(int(d.name) for d in base_dir.iterdir()
                  if d.is_dir() and d.name.isdigit() and (d / "nodes.conf").exists())


def _create(ports: list[int], timeout_s: float) -> None:
    """`redis-cli --cluster create` over `ports`, one replica per primary."""
    args = [_redis_binary("redis-cli"), "--cluster", "create", *(f"{HOST}:{p}" for p in ports),
            "--cluster-replicas", "1", "--cluster-yes"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
        raise StartError(f"redis-cli --cluster create failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def plan_ports(base_dir: Path) -> list[int]:
    """The cluster's six ports: those of its data under `base_dir` (a node comes back on its
    old port) or fresh ones whose bus port (+10000) is free too; reserved either way."""
    ports = existing_ports(base_dir) or [free_port_pair(BUS_PORT_OFFSET) for _ in range(NODES)]
    reserve_ports(ports)
    return ports


def reserve_ports(ports: list[int]) -> None:
    """free_port must never hand out these nodes' ports, nor their bus ports."""
    reserve([*ports, *(p + BUS_PORT_OFFSET for p in ports)])


def start_cluster(base_dir: Path, node_timeout_ms: int = 2000, ports: list[int] | None = None,
                  timeout_s: float = 120.0) -> LocalCluster:
    """Six cluster nodes under `base_dir`, created as 3 primaries + 3 replicas on a fresh
    directory, or restarted on their data (ports from the directory names unless given).
    Returns once ready (`LocalCluster.wait_ok`); on failure every node is stopped."""
    old = existing_ports(base_dir)
    fresh = not old
    ports = plan_ports(base_dir) if ports is None else ports
    if len(ports) != NODES:
        raise ValueError(f"a local cluster has {NODES} nodes, got ports {ports}")
    reserve_ports(ports)
    cluster = LocalCluster(base_dir, list(ports), node_timeout_ms, created=fresh)
    try:
        for port in ports:
            cluster.processes[port] = _start_node(cluster.node_dir(port), port, node_timeout_ms)
        for port in ports:
            wait_for_port(port, timeout_s)
        if fresh:
            _create(list(ports), timeout_s)
        cluster.wait_ok(timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster
