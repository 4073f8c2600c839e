"""The umbrella chart's redis.mode=cluster (issue 16, decision 0013) with a real helm: the
StatefulSet of cluster nodes, its headless Service, the bootstrap hook Job, the one
CRYPTEX_REDIS_URL every component reads (redis+cluster:// seeds: the first three pods), no
standalone Redis left, every built-in object valid for Kubernetes 1.31; the default render
keeps the standalone Redis; bad node counts and modes refused.

Then, where a Redis 7 server is installed, the rendered node arguments and the rendered
bootstrap script run for real on loopback: six nodes, the script forms the cluster, a second
run leaves it alone, and redis-py's cluster client works from the seed list.

Does not prove: pods scheduling, DNS of the headless Service, PVCs, the hook's ordering on
a real install or upgrade (no kube-apiserver here), the redis:7.2-alpine image itself.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import CHART, KUBE_VERSION, by_kind, render, run_helm

CLUSTER = ("redis.mode=cluster",)
STS = "cryptex-redis-cluster"  # release "cryptex", namespace "cryptex"
CUSTOM_GROUPS = ("monitoring.coreos.com/", "kopf.dev/", "cryptex.io/")


def host(i: int) -> str:
    return f"{STS}-{i}.{STS}.cryptex.svc"


CLUSTER_URL = f"redis+cluster://{host(0)}:6379,{host(1)}:6379,{host(2)}:6379/"


@cache
def _template(helm: str, sets: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    args = [
        "template",
        "cryptex",
        str(CHART),
        "--namespace",
        "cryptex",
        "--include-crds",
        "--kube-version",
        KUBE_VERSION,
    ]
    for s in sets:
        args += ["--set", s]
    return run_helm(helm, *args)


def rendered(helm: str, *sets: str) -> list[dict[str, Any]]:
    proc = _template(helm, sets)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def redis_url(docs: list[dict[str, Any]]) -> str:
    secret = by_kind(docs, "Secret")["cryptex-connections"]
    return base64.b64decode(secret["data"]["CRYPTEX_REDIS_URL"]).decode()


def bootstrap_script(job: dict[str, Any]) -> tuple[str, str]:
    c = container(job)
    assert c["command"] == ["sh", "-ec"]
    (script,) = c["args"]
    (env,) = c["env"]
    assert env["name"] == "REDIS_NODES"
    return script, env["value"]


# --- rendering ---------------------------------------------------------------------------


def test_cluster_nodes_statefulset(helm: str) -> None:
    docs = rendered(helm, *CLUSTER)
    sts = by_kind(docs, "StatefulSet")[STS]
    assert sts["spec"]["replicas"] == 6
    assert sts["spec"]["serviceName"] == STS
    c = container(sts)
    assert c["image"] == "redis:7.2-alpine"
    args = c["args"]
    assert args[0] == "redis-server"
    assert arg(args, "--cluster-enabled") == "yes"
    assert arg(args, "--cluster-config-file") == "/data/nodes.conf"
    assert arg(args, "--cluster-node-timeout") == "5000"
    assert arg(args, "--appendonly") == "yes"
    assert arg(args, "--appendfsync") == "everysec"
    assert arg(args, "--cluster-preferred-endpoint-type") == "hostname"
    # $(POD_NAME) is expanded by the kubelet from the downward API.
    assert arg(args, "--cluster-announce-hostname") == f"$(POD_NAME).{STS}.cryptex.svc"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert c["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"redis": 6379, "bus": 16379}
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    (pvc,) = sts["spec"]["volumeClaimTemplates"]
    assert pvc["metadata"]["name"] == "data"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_cluster_values_reach_the_nodes_and_the_job(helm: str) -> None:
    docs = rendered(
        helm,
        *CLUSTER,
        "redis.cluster.nodes=9",
        "redis.cluster.replicas=2",
        "redis.cluster.nodeTimeoutMs=15000",
        "redis.appendfsync=always",
    )
    sts = by_kind(docs, "StatefulSet")[STS]
    assert sts["spec"]["replicas"] == 9
    args = container(sts)["args"]
    assert arg(args, "--cluster-node-timeout") == "15000"
    assert arg(args, "--appendfsync") == "always"
    script, nodes = bootstrap_script(by_kind(docs, "Job")[f"{STS}-bootstrap"])
    assert "--cluster-replicas 2 --cluster-yes" in script
    assert nodes.split() == [f"{host(i)}:6379" for i in range(9)]


def test_headless_service_selects_the_nodes(helm: str) -> None:
    docs = rendered(helm, *CLUSTER)
    svc = by_kind(docs, "Service")[STS]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    pod_labels = by_kind(docs, "StatefulSet")[STS]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["redis"]["port"] == 6379 and ports["redis"]["targetPort"] == "redis"
    # The same pod labels as the standalone Redis: label selectors keep working.
    standalone = by_kind(rendered(helm), "StatefulSet")["cryptex-redis"]
    assert standalone["spec"]["selector"] == by_kind(docs, "StatefulSet")[STS]["spec"]["selector"]


def test_bootstrap_job_forms_the_cluster_once(helm: str) -> None:
    docs = rendered(helm, *CLUSTER)
    job = by_kind(docs, "Job")[f"{STS}-bootstrap"]
    notes = job["metadata"]["annotations"]
    assert set(notes["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation"
    script, nodes = bootstrap_script(job)
    assert nodes.split() == [f"{host(i)}:6379" for i in range(6)]
    assert "redis-cli --cluster create $REDIS_NODES --cluster-replicas 1 --cluster-yes" in script
    # Only when no node knows another or holds a slot (idempotent on re-run and upgrade).
    assert script.index("cluster_known_nodes") < script.index("--cluster create")
    assert script.index("cluster_slots_assigned") < script.index("--cluster create")
    c = container(job)
    assert c["image"] == container(by_kind(docs, "StatefulSet")[STS])["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_every_component_reads_the_one_cluster_url(helm: str) -> None:
    docs = rendered(helm, *CLUSTER)
    assert redis_url(docs) == CLUSTER_URL
    # The seeds are the first three pods of the StatefulSet, through its headless Service.
    sts = by_kind(docs, "StatefulSet")[STS]
    seeds = CLUSTER_URL.removeprefix("redis+cluster://").rstrip("/").split(",")
    for i, seed in enumerate(seeds):
        pod, svc, ns, _ = seed.removesuffix(":6379").split(".")
        assert (pod, svc, ns) == (f"{sts['metadata']['name']}-{i}", sts["spec"]["serviceName"], "cryptex")
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    readers = set()
    for w in workloads:
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert "CRYPTEX_REDIS_URL" not in {e["name"] for e in c.get("env", [])}, w["metadata"]["name"]
            if {"secretRef": {"name": "cryptex-connections"}} in c.get("envFrom", []):
                readers.add(w["metadata"]["name"])
    assert {"cryptex-api", "cryptex-wsgateway", "cryptex-dbproc", "cryptex-operator"} <= readers
    # The operator hands the engines it creates the same Secret.
    op_env = {e["name"]: e.get("value") for e in container(by_kind(docs, "Deployment")["cryptex-operator"])["env"]}
    assert op_env["CRYPTEX_ENGINE_ENV_SECRET"] == "cryptex-connections"


def test_static_engines_read_the_cluster_url_too(helm: str) -> None:
    docs = rendered(helm, *CLUSTER, "operator.enabled=false", "engine.markets[0].symbol=SOL/USDC")
    engine = by_kind(docs, "Deployment")["engine-sol-usdc"]
    assert {"secretRef": {"name": "cryptex-connections"}} in container(engine)["envFrom"]
    assert redis_url(docs) == CLUSTER_URL


def test_no_standalone_redis_in_cluster_mode(helm: str) -> None:
    docs = rendered(helm, *CLUSTER)
    assert set(by_kind(docs, "StatefulSet")) == {STS, "cryptex-timescaledb"}
    assert not any("redis" in n for n in by_kind(docs, "Deployment"))
    assert "cryptex-redis" not in by_kind(docs, "Service")
    for d in docs:
        if d["kind"] == "StatefulSet" and d["metadata"]["name"] != "cryptex-timescaledb":
            assert "--cluster-enabled" in container(d)["args"]


def test_default_render_is_standalone(helm: str) -> None:
    for docs in (render(helm), rendered(helm, "redis.mode=standalone")):
        assert redis_url(docs) == "redis://cryptex-redis:6379/0"
        sts = by_kind(docs, "StatefulSet")
        assert set(sts) == {"cryptex-redis", "cryptex-timescaledb"}
        assert sts["cryptex-redis"]["spec"]["replicas"] == 1
        assert "--cluster-enabled" not in container(sts["cryptex-redis"])["args"]
        assert by_kind(docs, "Service")["cryptex-redis"]["spec"]["ports"][0]["port"] == 6379
        assert not by_kind(docs, "Job")
        assert not any("redis-cluster" in d["metadata"]["name"] for d in docs)


def test_external_cluster_url_is_passed_through(helm: str) -> None:
    url = "redis+cluster://r1.example:6379,r2.example:6379/"
    escaped = url.replace(",", "\\,")  # --set splits on unescaped commas
    docs = rendered(helm, "redis.enabled=false", f"externalRedis.url={escaped}", "redis.mode=cluster")
    assert redis_url(docs) == url
    assert not any("redis" in d["metadata"]["name"] for d in docs if d["kind"] in ("StatefulSet", "Service", "Job"))


@pytest.mark.parametrize(
    "sets",
    [
        ("redis.cluster.nodes=4",),  # 2 primaries with one replica each
        ("redis.cluster.nodes=7",),  # not a multiple of 2
        ("redis.cluster.nodes=6", "redis.cluster.replicas=2"),  # 2 primaries
        ("redis.cluster.nodes=5", "redis.cluster.replicas=0"),  # fine: checked below
    ],
)
def test_node_count_must_give_three_primaries(helm: str, sets: tuple[str, ...]) -> None:
    proc = _template(helm, (*CLUSTER, *sets))
    if sets == ("redis.cluster.nodes=5", "redis.cluster.replicas=0"):
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode != 0
    assert "redis.cluster.nodes" in proc.stderr
    assert "must be a multiple of redis.cluster.replicas+1" in proc.stderr
    assert "at least 3 primaries" in proc.stderr


@pytest.mark.parametrize(
    "value,error",
    [
        ("redis.mode=sentinel", "/redis/mode"),
        ("redis.cluster.nodes=2", "/redis/cluster/nodes"),
        ("redis.cluster.replicas=-1", "/redis/cluster/replicas"),
        ("redis.cluster.shards=3", "additional properties"),
        ("externalRedis.url=memcached://x:11211", "/externalRedis/url"),
    ],
)
def test_values_schema_rejects(helm: str, value: str, error: str) -> None:
    proc = _template(helm, (value,))
    assert proc.returncode != 0
    assert error in proc.stderr, proc.stderr


def test_lint_strict_in_cluster_mode(helm: str) -> None:
    # Without --with-subcharts: that lints each subchart with these values as its own.
    proc = run_helm(helm, "lint", str(CHART), "--strict", "--set", "redis.mode=cluster")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_builtin_object_is_schema_valid_in_cluster_mode(helm: str) -> None:
    checked = set()
    for doc in rendered(helm, *CLUSTER):
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        kubernetes_validate.validate(doc, "1.31", strict=True)
        checked.add((doc["kind"], doc["metadata"]["name"]))
    assert {("StatefulSet", STS), ("Service", STS), ("Job", f"{STS}-bootstrap")} <= checked


def test_cluster_pods_are_non_root_with_probes_and_resources(helm: str) -> None:
    docs = rendered(helm, *CLUSTER)
    for w in (by_kind(docs, "StatefulSet")[STS], by_kind(docs, "Job")[f"{STS}-bootstrap"]):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        c = container(w)
        assert c["resources"]["requests"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "livenessProbe" in container(by_kind(docs, "StatefulSet")[STS])


class _StrictLoader(yaml.SafeLoader):
    """Refuses a key twice in one mapping (Helm keeps the last; Flux/kustomize refuse)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {dupes}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def test_cluster_objects_have_no_duplicate_keys(helm: str) -> None:
    text = _template(helm, CLUSTER).stdout
    for chunk in text.split("\n---\n"):
        if "templates/redis-cluster.yaml" in chunk:
            assert yaml.load(chunk, Loader=_StrictLoader)


# --- the rendered arguments and script against a real Redis 7 on loopback ----------------


def _redis_server() -> str | None:
    path = shutil.which("redis-server")
    if path is None or shutil.which("redis-cli") is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    version = out.split("v=")[1].split()[0] if "v=" in out else "0"
    return path if int(version.split(".")[0]) >= 7 else None


def _ports(count: int) -> list[int]:
    """Free loopback ports whose cluster bus port (+10000) is free too."""
    import socket

    from cryptex_launcher.stack import free_port

    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@pytest.fixture
def loopback_nodes(helm: str) -> Iterator[list[str]]:
    """Six redis-server processes started with the StatefulSet's rendered arguments (only
    the paths, the announced host name and the port changed for loopback)."""
    server = _redis_server()
    if server is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no redis-server 7 here")
        pytest.skip("no redis-server 7 (with redis-cli) here")
    args = container(by_kind(rendered(helm, *CLUSTER), "StatefulSet")[STS])["args"]
    procs: list[subprocess.Popen[bytes]] = []
    nodes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i, port in enumerate(_ports(6)):
                data = Path(tmp) / str(i)
                data.mkdir()
                local = [a.replace("/data", str(data)) for a in args[1:]]
                local[local.index("--cluster-announce-hostname") + 1] = "localhost"
                procs.append(
                    subprocess.Popen(
                        [server, *local, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                nodes.append(f"127.0.0.1:{port}")
            yield nodes
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)


def _run_bootstrap(script: str, nodes: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_NODES": " ".join(nodes)}
    return subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=240, check=False)


def _cluster_nodes(node: str) -> str:
    h, p = node.rsplit(":", 1)
    return subprocess.run(
        ["redis-cli", "-h", h, "-p", p, "cluster", "nodes"], capture_output=True, text=True, check=True
    ).stdout


def test_rendered_bootstrap_forms_the_cluster_once(helm: str, loopback_nodes: list[str]) -> None:
    import redis
    import redis.cluster

    script, _ = bootstrap_script(by_kind(rendered(helm, *CLUSTER), "Job")[f"{STS}-bootstrap"])
    first = _run_bootstrap(script, loopback_nodes)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "forming the cluster" in first.stdout and "cluster_state:ok" in first.stdout
    deadline = time.monotonic() + 30
    while True:  # the replicas' roles reach node 0 by gossip, a moment later
        topology = _cluster_nodes(loopback_nodes[0])
        if topology.count("master") == 3 and topology.count("slave") == 3:
            break
        assert time.monotonic() < deadline, first.stdout + topology
        time.sleep(0.2)

    # Run again (a Job retry, or the post-upgrade hook): nothing is created again.
    again = _run_bootstrap(script, loopback_nodes)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not creating it again" in again.stdout and "forming" not in again.stdout
    assert sorted(line.split()[0] for line in _cluster_nodes(loopback_nodes[0]).splitlines()) == sorted(
        line.split()[0] for line in topology.splitlines()
    )

    # The URL's shape: three seeds; the cluster redirects by the announced host name.
    seeds = [redis.cluster.ClusterNode(n.split(":")[0], int(n.split(":")[1])) for n in loopback_nodes[:3]]
    client = redis.cluster.RedisCluster(startup_nodes=seeds, socket_timeout=5)
    try:
        deadline = time.monotonic() + 30
        for key in (f"k{i}" for i in range(50)):  # spread over all three primaries
            while True:
                try:
                    client.set(key, key)
                    break
                except redis.exceptions.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            assert client.get(key) == key.encode()
    finally:
        client.close()
    # Clients are sent to the announced host name (the pod's DNS name in the chart).
    h, p = loopback_nodes[0].rsplit(":", 1)
    with redis.Redis(host=h, port=int(p)) as node:
        slots = node.execute_command("CLUSTER SLOTS")
    # [start, end, [host, port, id, ...] of the primary, then each replica's]
    assert len(slots) == 3, slots
    assert {_text(node[0]) for s in slots for node in s[2:]} == {"localhost"}, slots


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
