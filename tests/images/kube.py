"""A small stand-in for a kubelet: run a rendered Deployment's pod under podman, as written.

What it takes from the manifest: the image; `command`/`args` (entrypoint and arguments);
`env` (`value`, `secretKeyRef` and `configMapKeyRef` from the rendered Secrets/ConfigMaps,
`fieldRef` metadata.name/namespace); `envFrom` (Secrets and ConfigMaps, with `prefix`); the
pod and container `securityContext` (runAsUser/runAsGroup, runAsNonRoot, fsGroup as a
supplementary group, readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation,
seccompProfile); `emptyDir` volumes (tmpfs, with sizeLimit); `containerPort`s; resource
limits (memory as a hard limit without swap, cpu as a CPU quota; requests only matter to a
scheduler); the pod name as hostname; `terminationGracePeriodSeconds`; and the HTTP probes,
run like the kubelet does (startup until it passes or fails failureThreshold times, then
readiness; liveness checked).

Each pod gets its own network namespace (slirp4netns), so the rendered ports are used as
they are; each containerPort is published on a free port of the host's loopback (the test's
"pod IP"), and the pod reaches the host's loopback at 10.0.2.2 (the test's Redis and
PostgreSQL, named by URLs in the rendered connections Secret).

Anything else in a pod spec (other volume types, init containers, sidecars, other probe
kinds, env sources) raises NotImplementedError rather than being silently ignored.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.images.podman import LABEL, Container, http_get, podman
from tests.support.servers import free_port

HOST_LOOPBACK = "10.0.2.2"  # slirp4netns: the host's 127.0.0.1, seen from the pod
NETWORK = "slirp4netns:allow_host_loopback=true,port_handler=slirp4netns"
SUPPORTED_POD_KEYS = {"automountServiceAccountToken", "enableServiceLinks", "terminationGracePeriodSeconds",
                      "securityContext", "containers", "volumes", "imagePullSecrets", "nodeSelector",
                      "tolerations", "affinity", "serviceAccountName", "topologySpreadConstraints"}
SUPPORTED_CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "ports", "env", "envFrom",
                            "startupProbe", "livenessProbe", "readinessProbe", "resources", "securityContext",
                            "volumeMounts"}


def quantity(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(value[: -len(suffix)]) * factor
    return int(value)


def config_data(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    """(kind, name) -> decoded data of every rendered Secret and ConfigMap."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for doc in docs:
        if doc["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            data |= doc.get("stringData") or {}
            out["Secret", doc["metadata"]["name"]] = data
        elif doc["kind"] == "ConfigMap":
            out["ConfigMap", doc["metadata"]["name"]] = dict(doc.get("data") or {})
    return out


@dataclass
class Pod:
    workload: str
    name: str
    spec: dict[str, Any]
    container: Container
    ports: dict[str | int, int] = field(default_factory=dict)  # port name/number -> host port

    @property
    def main(self) -> dict[str, Any]:
        return dict(self.spec["containers"][0])

    def probe_url(self, probe: dict[str, Any]) -> str:
        if set(probe) - {"httpGet", "periodSeconds", "timeoutSeconds", "failureThreshold",
                         "successThreshold", "initialDelaySeconds"}:
            raise NotImplementedError(f"probe {probe}")
        get = probe["httpGet"]
        if get.get("scheme", "HTTP") != "HTTP" or get.get("host") or get.get("httpHeaders"):
            raise NotImplementedError(f"httpGet {get}")
        return f"http://127.0.0.1:{self.ports[get['port']]}{get['path']}"


def _env(container: dict[str, Any], pod_name: str, namespace: str,
         data: dict[tuple[str, str], dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source["configMapRef"])
        for key, value in data[kind, ref["name"]].items():
            env[source.get("prefix", "") + key] = value
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            env[var["name"]] = data["Secret", ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[var["name"]] = data["ConfigMap", ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        elif ref.get("fieldRef", {}).get("fieldPath") in ("metadata.name", "metadata.namespace"):
            env[var["name"]] = pod_name if ref["fieldRef"]["fieldPath"] == "metadata.name" else namespace
        else:
            raise NotImplementedError(f"env {var}")
    return env


def _security_args(pod: dict[str, Any], container: dict[str, Any], pod_name: str) -> list[str]:
    argv: list[str] = []
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and not uid:
        raise AssertionError(f"{pod_name}: runAsNonRoot without a numeric non-root runAsUser")
    if uid is not None:
        argv.append(f"--user={uid}" + (f":{gid}" if gid is not None else ""))
    if "fsGroup" in psc:
        argv.append(f"--group-add={psc['fsGroup']}")
    if csc.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]  # only the pod's volumes are writable
    for cap in csc.get("capabilities", {}).get("drop", []):
        argv.append(f"--cap-drop={cap}")
    for cap in csc.get("capabilities", {}).get("add", []):
        argv.append(f"--cap-add={cap}")
    if csc.get("allowPrivilegeEscalation") is False:
        argv.append("--security-opt=no-new-privileges")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {"type": "RuntimeDefault"}))
    if seccomp["type"] == "Unconfined":
        argv.append("--security-opt=seccomp=unconfined")
    elif seccomp["type"] != "RuntimeDefault":
        raise NotImplementedError(f"seccompProfile {seccomp}")
    return argv


def _volume_args(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if set(volume) != {"name", "emptyDir"} or volume["emptyDir"].get("medium") not in (None, "", "Memory"):
            raise NotImplementedError(f"volume {volume}")
        size = volume["emptyDir"].get("sizeLimit")
        opts = f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=1777"
        argv += ["--mount", opts + (f",tmpfs-size={quantity(size)}" if size else "")]
    return argv


def _cpu(value: str | int | float) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _resource_args(container: dict[str, Any]) -> list[str]:
    limits = container.get("resources", {}).get("limits", {})
    if set(limits) - {"memory", "cpu"}:
        raise NotImplementedError(f"limits {limits}")
    argv: list[str] = []
    if "memory" in limits:  # as the kubelet sets it: a hard limit, no swap on top
        argv += [f"--memory={quantity(limits['memory'])}", f"--memory-swap={quantity(limits['memory'])}"]
    if "cpu" in limits:
        argv.append(f"--cpus={_cpu(limits['cpu'])}")
    return argv


def _port_args(container: dict[str, Any], ports: dict[str | int, int]) -> list[str]:
    argv: list[str] = []
    for port in container.get("ports", []):
        host = free_port()
        ports[port["containerPort"]] = host
        if "name" in port:
            ports[port["name"]] = host
        argv += ["-p", f"127.0.0.1:{host}:{port['containerPort']}/{port.get('protocol', 'TCP').lower()}"]
    return argv


def podman_run_args(workload: dict[str, Any], docs: list[dict[str, Any]], pod_name: str,
                    ports: dict[str | int, int]) -> list[str]:
    """The `podman run` arguments for the Deployment's pod (one container)."""
    pod = workload["spec"]["template"]["spec"]
    if set(pod) - SUPPORTED_POD_KEYS or len(pod["containers"]) != 1:
        raise NotImplementedError(f"pod keys {set(pod) - SUPPORTED_POD_KEYS}, {len(pod['containers'])} containers")
    (container,) = pod["containers"]
    if set(container) - SUPPORTED_CONTAINER_KEYS:
        raise NotImplementedError(f"container keys {set(container) - SUPPORTED_CONTAINER_KEYS}")
    namespace = workload["metadata"].get("namespace", "default")
    argv = ["run", "-d", "--name", pod_name, "--hostname", pod_name, "--label", LABEL, "--pull=never",
            f"--network={NETWORK}", "--stop-timeout", str(pod.get("terminationGracePeriodSeconds", 30))]

    argv += _security_args(pod, container, pod_name)
    argv += _volume_args(pod, container)
    argv += _port_args(container, ports)
    argv += _resource_args(container)
    for key, value in _env(container, pod_name, namespace, config_data(docs)).items():
        argv += ["-e", f"{key}={value}"]
    if "command" in container:
        argv += ["--entrypoint", json.dumps(container["command"])]
    return [*argv, container["image"], *container.get("args", [])]


def start_pod(workload: dict[str, Any], docs: list[dict[str, Any]]) -> Pod:
    name = f"{workload['metadata']['name']}-{uuid.uuid4().hex[:5]}"
    ports: dict[str | int, int] = {}
    argv = podman_run_args(workload, docs, name, ports)
    container = Container(name, workload["spec"]["template"]["spec"]["containers"][0]["image"])
    podman(*argv)
    return Pod(workload["metadata"]["name"], name, workload["spec"]["template"]["spec"], container, ports)


def _probe_once(url: str, timeout: float) -> bool:
    try:
        code, _ = http_get(url, timeout=timeout)
    except (OSError, urllib.error.URLError):
        return False
    return 200 <= code < 400


def wait_ready(pod: Pod, limit_s: float = 180.0) -> float:
    """The kubelet's order: the startup probe every periodSeconds until it passes (the pod
    fails after failureThreshold misses), then the readiness probe until it passes; then the
    liveness probe must pass. Returns the seconds from `podman run` to Ready."""
    main = pod.main
    deadline = time.monotonic() + limit_s
    for kind in ("startupProbe", "readinessProbe"):
        probe = main.get(kind)
        if probe is None:
            continue
        url, period = pod.probe_url(probe), float(probe.get("periodSeconds", 10))
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        misses = 0
        while not _probe_once(url, float(probe.get("timeoutSeconds", 1))):
            misses += 1
            if not pod.container.running():
                raise AssertionError(f"{pod.name} exited before its {kind} passed:\n{pod.container.logs()}")
            if kind == "startupProbe" and misses >= int(probe.get("failureThreshold", 3)):
                raise AssertionError(f"{pod.name}: {kind} {url} failed {misses} times (the kubelet would "
                                     f"restart it):\n{pod.container.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pod.name}: {kind} {url} not passing after {limit_s}s:\n"
                                     f"{pod.container.logs()}")
            time.sleep(period)
    ready = time.monotonic() - pod.container.started
    if "livenessProbe" in main:
        url = pod.probe_url(main["livenessProbe"])
        assert _probe_once(url, float(main["livenessProbe"].get("timeoutSeconds", 1))), url
    return ready
