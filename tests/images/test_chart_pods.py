"""The chart's pods, run: `helm template` the umbrella chart with test values, then start the
api, wsgateway, dbproc and engine Deployments' pods under podman exactly as rendered
(tests/images/kube.py: command, args, env, env from Secrets, ports, securityContext, emptyDir,
memory and cpu limits, probes), all at once, against a Redis and a PostgreSQL this session started, and wait for each
to pass its own startup, readiness and liveness probes.

Proves: the rendered manifests and the images fit together (entrypoints, arguments, env names
and Secret keys, ports and probe paths, a read-only root with only /tmp writable, uid 10001
with no capabilities); each pod gets Ready from its own probes.
Does not prove: scheduling and resource requests, Services and cluster DNS (the pods reach
Redis and PostgreSQL by the URLs in the connections Secret, here the host's loopback), RBAC,
admission and CEL, garbage collection, the ingress, the operator creating engines (see
test_images.py and tests/operator for that).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from cryptex_client import CryptexClient
from cryptex_common import keys
from tests.deploy.conftest import CHART, KUBE_VERSION, helm_path, run_helm
from tests.images.conftest import PREFIX, TAG, Images, record
from tests.images.kube import HOST_LOOPBACK, Pod, config_data, quantity, start_pod, wait_ready
from tests.images.podman import ci, podman
from tests.images.test_images import register_markets
from tests.support.servers import PostgresServer, RedisServer, new_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

WORKLOADS = ("cryptex-api", "cryptex-wsgateway", "cryptex-dbproc", "engine-sol-usdc")


def values(redis_port: int, database: str) -> dict[str, Any]:
    registry, repo_prefix = PREFIX.split("/", 1)
    return {
        "global": {"image": {"registry": registry, "tag": TAG}},
        **{c: {"image": {"repository": f"{repo_prefix}/{c}", "pullPolicy": "Never"}}
           for c in ("api", "wsgateway", "dbproc")},
        "engine": {"image": {"repository": f"{repo_prefix}/engine", "pullPolicy": "Never"},
                   "markets": [{"symbol": "SOL/USDC"}]},
        "operator": {"enabled": False},  # run by test_images.py against kmock instead
        "redis": {"enabled": False},
        "externalRedis": {"url": f"redis://{HOST_LOOPBACK}:{redis_port}/0"},
        "timescaledb": {"enabled": False},
        "externalDatabase": {"url": database},
        "ingress": {"enabled": False},
    }


def rendered(tmp_path: Path, vals: dict[str, Any]) -> list[dict[str, Any]]:
    helm = helm_path()
    if helm is None:
        message = "no helm binary: run scripts/get-helm.sh"
        if ci():
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(vals))
    proc = run_helm(helm, "template", "cryptex", str(CHART), "--namespace", "cryptex",
                    "--kube-version", KUBE_VERSION, "-f", str(path))
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


async def test_rendered_pods_start_and_pass_their_probes(
        images: Images, redis_srv: RedisServer, redis_client: aioredis.Redis, postgres: PostgresServer,
        tmp_path: Path) -> None:
    database = (await new_database(postgres)).replace("127.0.0.1", HOST_LOOPBACK)
    docs = rendered(tmp_path, values(redis_srv.port, database))
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == set(WORKLOADS), set(deployments)
    for name in WORKLOADS:  # the images these tests built, by the names the chart renders
        image = deployments[name]["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image in images.names.values(), image
    # What the operator does in a cluster (the static engines of this render have no operator).
    await register_markets(redis_client)

    pods: list[Pod] = []
    try:
        t0 = time.monotonic()
        for name in WORKLOADS:
            pods.append(await asyncio.to_thread(start_pod, deployments[name], docs))
        ready = await asyncio.gather(*(asyncio.to_thread(wait_ready, pod) for pod in pods))
        total = time.monotonic() - t0
        for pod, seconds in zip(pods, ready, strict=True):
            record(f"pod {pod.workload} Ready (podman run -> probes pass)", f"{seconds:.1f} s")
            assert pod.container.running()
            assert pod.container.uids() == (10001, 10001)
        record("all four pods Ready", f"{total:.1f} s")
        # The API pod's admin token came from the rendered Secret (secretKeyRef).
        api = next(p for p in pods if p.workload == "cryptex-api")
        (token,) = config_data(docs)["Secret", "cryptex-api-admin"].values()
        async with CryptexClient(f"http://127.0.0.1:{api.ports['http']}", admin_token=token) as admin:
            assert (await admin.create_user()).status == 201
        # Only the emptyDir is writable, and the rendered memory limit holds.
        for pod in pods:
            limit = pod.main["resources"]["limits"]["memory"]
            memory = podman("inspect", "--format", "{{.HostConfig.Memory}}", pod.name).stdout.strip()
            assert memory == str(quantity(limit)) and quantity(limit) >= 2**27, (pod.name, memory)
            assert pod.container.exec("python", "-c", "open('/tmp/x', 'w')").returncode == 0
            assert "Read-only file system" in pod.container.exec("python", "-c", "open('/x', 'w')").stderr
        # The engine pod took its market's fencing epoch and holds the lease with it.
        epoch = await redis_client.get(keys.engine_epoch_key("SOL/USDC"))
        assert epoch is not None and int(epoch) >= 1
        assert await redis_client.get(keys.engine_lease_key("SOL/USDC")) == epoch
    finally:
        for pod in pods:
            await asyncio.to_thread(pod.container.remove)
