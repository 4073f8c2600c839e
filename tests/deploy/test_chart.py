"""The umbrella chart with a real helm: lint, render with default, dev, static-engine and
monitoring values, every built-in object validated against Kubernetes 1.31's schemas (strict:
unknown fields fail), and assertions on what matters.

Proves: the chart renders, its values schemas hold, the wiring is right (names, ports,
probes, selectors). Does not prove: install/upgrade on a cluster, admission, that pods start.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from cryptex_operator import render as operator_render
from cryptex_operator.config import OperatorSettings
from tests.deploy.conftest import CHART, by_kind, render, run_helm

VALUES = {
    "default": (),
    "dev": ("values-dev.yaml",),
    "static": ("ci/static-engines-values.yaml",),
    "monitoring": ("ci/monitoring-values.yaml",),
}
APPS = ("api", "wsgateway", "engine", "dbproc")
CUSTOM_GROUPS = ("monitoring.coreos.com/", "kopf.dev/", "cryptex.io/")


def rendered(helm: str, name: str) -> list[dict[str, Any]]:
    return render(helm, *VALUES[name], monitoring=name == "monitoring")


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = ("Deployment", "StatefulSet", "DaemonSet")
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]
            for d in docs if d["kind"] in kinds}


def test_lint_strict_with_subcharts(helm: str) -> None:
    proc = run_helm(helm, "lint", str(CHART), "--strict", "--with-subcharts")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["dev", "static", "monitoring"])
def test_lint_strict_with_values(helm: str, name: str) -> None:
    args = [a for v in VALUES[name] for a in ("-f", str(CHART / v))]
    proc = run_helm(helm, "lint", str(CHART), "--strict", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", list(VALUES))
def test_every_builtin_object_is_schema_valid(helm: str, name: str) -> None:
    docs = rendered(helm, name)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue  # checked below (ServiceMonitor, PrometheusRule) or by the CRD tests
        kubernetes_validate.validate(doc, "1.31", strict=True)
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("value,error", [
    ("api.replicaCount=0", "minimum"),
    ("operator.image.pullPolicy=Sometimes", "pullPolicy"),
    ("wsgateway.replicas=3", "additional properties"),
    ("engine.markets[0].symbol=sol-usdc", "pattern"),
    ("redis.appendfsync=no", "appendfsync"),
])
def test_values_schema_rejects_bad_values(helm: str, value: str, error: str) -> None:
    proc = run_helm(helm, "template", "cryptex", str(CHART), "--set", value)
    assert proc.returncode != 0
    assert error in proc.stderr


def test_bad_external_urls_without_bundled_servers(helm: str) -> None:
    proc = run_helm(helm, "template", "cryptex", str(CHART), "--set", "redis.enabled=false")
    assert proc.returncode != 0 and "externalRedis.url" in proc.stderr


@pytest.mark.parametrize("name", list(VALUES))
def test_pods_are_non_root_with_probes_and_resources(helm: str, name: str) -> None:
    docs = rendered(helm, name)
    for workload, pod in pod_specs(docs).items():
        ctx = pod.get("securityContext", {})
        for container in pod["containers"]:
            assert container.get("resources", {}).get("requests"), (workload, "resources")
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "readinessProbe" in container and "livenessProbe" in container, workload
        if workload.endswith("-promtail"):
            continue  # reads root-owned log files on the node
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, workload
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("name", list(VALUES))
def test_cryptex_services_probe_healthz_and_readyz(helm: str, name: str) -> None:
    docs = rendered(helm, name)
    for workload, pod in pod_specs(docs).items():
        (container,) = pod["containers"]
        if not container["image"].split("/")[-1].startswith(("api", "wsgateway", "engine",
                                                             "dbproc")):
            continue
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", workload
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", workload
        ports = {p["name"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["port"] in ports
        if name != "dev":
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_default_render_has_the_components(helm: str) -> None:
    docs = rendered(helm, "default")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"cryptex-api", "cryptex-wsgateway", "cryptex-dbproc",
                                "cryptex-operator"}
    assert set(by_kind(docs, "StatefulSet")) == {"cryptex-redis", "cryptex-timescaledb"}
    assert set(by_kind(docs, "CustomResourceDefinition")) == {"markets.cryptex.io",
                                                              "kopfpeerings.kopf.dev"}
    # No monitoring objects without the Prometheus Operator's APIs.
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")
    env = {e["name"]: e.get("value") for e in
           deployments["cryptex-api"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CRYPTEX_HOST"] == "0.0.0.0" and env["CRYPTEX_PORT"] == "8080"


def test_redis_runs_with_the_append_only_file(helm: str) -> None:
    redis = by_kind(rendered(helm, "default"), "StatefulSet")["cryptex-redis"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    secret = by_kind(rendered(helm, "default"), "Secret")["cryptex-connections"]
    assert set(secret["data"]) == {"CRYPTEX_REDIS_URL", "CRYPTEX_DATABASE_URL"}


def test_static_engines_are_single_replica_recreate(helm: str) -> None:
    docs = rendered(helm, "static")
    engines = {n: d for n, d in by_kind(docs, "Deployment").items() if n.startswith("engine-")}
    assert set(engines) == {"engine-sol-usdc", "engine-btc-usdc"}
    assert "cryptex-operator" not in by_kind(docs, "Deployment")
    for dep in engines.values():
        assert dep["spec"]["replicas"] == 1
        assert dep["spec"]["strategy"] == {"type": "Recreate"}
    args = engines["engine-btc-usdc"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--market", "BTC/USDC"]


def test_static_engine_agrees_with_the_operators_engine(helm: str) -> None:
    """The chart's static engine and the operator's engine Deployment are the same shape:
    names, labels, args, probes, ports, security, annotations."""
    chart_dep = by_kind(rendered(helm, "static"), "Deployment")["engine-sol-usdc"]
    spec = yaml.safe_load((CHART.parents[1] / "k8s/examples/sol-usdc.yaml").read_text())["spec"]
    cfg = OperatorSettings(engine_env_secret="cryptex-connections", release="cryptex")
    op_dep = operator_render.engine_deployment(name="sol-usdc", namespace="cryptex", uid="u",
                                               spec=spec, cfg=cfg)
    assert chart_dep["metadata"]["name"] == op_dep["metadata"]["name"]
    assert chart_dep["metadata"]["annotations"] == op_dep["metadata"]["annotations"]
    assert chart_dep["spec"]["selector"] == op_dep["spec"]["selector"]
    for key in ("replicas", "strategy"):
        assert chart_dep["spec"][key] == op_dep["spec"][key]
    chart_pod, op_pod = chart_dep["spec"]["template"]["spec"], op_dep["spec"]["template"]["spec"]
    assert chart_pod["securityContext"] == op_pod["securityContext"]
    (cc,), (oc,) = chart_pod["containers"], op_pod["containers"]
    for key in ("args", "env", "envFrom", "ports", "livenessProbe", "readinessProbe",
                "securityContext", "volumeMounts"):
        assert cc[key] == oc[key], key


def test_engine_service_selects_the_operators_engines(helm: str) -> None:
    svc = by_kind(rendered(helm, "default"), "Service")["cryptex-engine"]
    labels = operator_render.engine_labels("SOL/USDC", "cryptex")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["clusterIP"] == "None"


def test_operator_is_wired_to_the_engine_image_and_secret(helm: str) -> None:
    docs = rendered(helm, "default")
    op = by_kind(docs, "Deployment")["cryptex-operator"]
    assert op["spec"]["replicas"] == 2
    pod = op["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CRYPTEX_ENGINE_IMAGE"] == "cryptex/engine:0.1.0"
    assert env["CRYPTEX_ENGINE_ENV_SECRET"] == "cryptex-connections"
    assert env["CRYPTEX_WATCH_NAMESPACE"] == "cryptex" and env["CRYPTEX_RELEASE"] == "cryptex"
    assert pod["serviceAccountName"] == "cryptex-operator"
    assert env["CRYPTEX_PEERING_NAME"] in by_kind(docs, "KopfPeering")
    # The settings parse as the operator would parse them.
    OperatorSettings(**{k.removeprefix("CRYPTEX_").lower(): v for k, v in env.items() if v})


def test_operator_rbac_is_what_it_uses(helm: str) -> None:
    docs = rendered(helm, "default")
    role = by_kind(docs, "Role")["cryptex-operator"]
    grants = {(g, r): set(rule["verbs"]) for rule in role["rules"]
              for g in rule["apiGroups"] for r in rule["resources"]}
    assert grants[("apps", "deployments")] == {"get", "create", "patch", "delete"}
    assert grants[("cryptex.io", "markets")] == {"list", "watch", "get", "patch"}
    assert grants[("cryptex.io", "markets/status")] == {"get", "patch"}
    assert grants[("kopf.dev", "kopfpeerings")] == {"list", "watch", "get", "patch"}
    assert grants[("", "events")] == {"create"}
    cluster = by_kind(docs, "ClusterRole")["cryptex-operator-cryptex"]
    for rule in cluster["rules"]:
        assert set(rule["verbs"]) <= {"list", "watch"}  # cluster-wide: reads only
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])


def test_pod_disruption_budgets_for_the_replicated(helm: str) -> None:
    pdbs = by_kind(rendered(helm, "default"), "PodDisruptionBudget")
    assert set(pdbs) == {"cryptex-api", "cryptex-wsgateway", "cryptex-operator"}
    dev = by_kind(rendered(helm, "dev"), "PodDisruptionBudget")
    assert set(dev) == set()  # one replica each: a PDB would block node drains


def test_ingress_routes_rest_and_ws(helm: str) -> None:
    (ing,) = by_kind(rendered(helm, "default"), "Ingress").values()
    services = by_kind(rendered(helm, "default"), "Service")
    paths = {p["path"]: p["backend"]["service"] for p in ing["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/api"] == {"name": "cryptex-api", "port": {"name": "http"}}
    assert paths["/ws"] == {"name": "cryptex-wsgateway", "port": {"name": "ws"}}
    assert paths["/binance"] == {"name": "cryptex-wsgateway", "port": {"name": "ws"}}  # Binance WS facade
    assert paths["/"]["name"] == "cryptex-api"
    for backend in paths.values():
        ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
        assert backend["port"]["name"] in ports
    assert ing["spec"]["ingressClassName"] == "nginx"


def test_a_servicemonitor_per_component(helm: str) -> None:
    docs = rendered(helm, "monitoring")
    monitors = by_kind(docs, "ServiceMonitor")
    services = by_kind(docs, "Service")
    assert set(monitors) == {f"cryptex-{c}" for c in APPS}
    for name, sm in monitors.items():
        svc = services[name]
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_public_services_serve_metrics_on_an_ops_port_only(helm: str) -> None:
    """api and wsgateway: the ServiceMonitor scrapes the Service port 'ops', which targets the
    container port the process serves /metrics on (CRYPTEX_OPS_PORT); the Ingress routes to
    other ports only, so /metrics is never public (issue 11 and its gateway follow-up)."""
    docs = rendered(helm, "monitoring")
    monitors, services = by_kind(docs, "ServiceMonitor"), by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    (ing,) = by_kind(rendered(helm, "default"), "Ingress").values()
    routed = {(p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
              for p in ing["spec"]["rules"][0]["http"]["paths"]}
    for name in ("cryptex-api", "cryptex-wsgateway"):
        (endpoint,) = monitors[name]["spec"]["endpoints"]
        assert endpoint["port"] == "ops", name
        assert (name, "ops") not in routed
        (svc_port,) = [p for p in services[name]["spec"]["ports"] if p["name"] == "ops"]
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        (ops,) = [p for p in container["ports"] if p["name"] == svc_port["targetPort"]]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CRYPTEX_OPS_PORT"] == str(ops["containerPort"]), name
        assert env["CRYPTEX_OPS_HOST"] == "0.0.0.0", name
        assert ops["containerPort"] != int(env["CRYPTEX_PORT"]), name
        probe_ports = {container[k]["httpGet"]["port"]
                       for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert "ops" not in probe_ports  # probes stay on the public port (/healthz, /readyz)


def test_monitoring_objects_match_their_schemas(helm: str) -> None:
    """ServiceMonitor and PrometheusRule against the Prometheus Operator's models, plus a
    diff so that a misspelt key (which the models would ignore) fails too."""
    from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

    docs = rendered(helm, "monitoring")
    models: dict[str, Any] = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}
    seen = set()
    for doc in docs:
        model = models.get(doc["kind"])
        if model is None:
            continue
        parsed = model.model_validate(doc)
        assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc
        seen.add(doc["kind"])
    assert seen == {"ServiceMonitor", "PrometheusRule"}


def test_monitoring_assets_are_packaged(helm: str) -> None:
    docs = rendered(helm, "monitoring")
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    maps = [d for d in by_kind(docs, "ConfigMap").values()
            if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(maps) == len(dashboards)  # zero files: zero ConfigMaps, and that is fine
    for cm in maps:
        ((key, body),) = cm["data"].items()
        assert (CHART / "files" / "dashboards" / key).read_text().strip() == body.strip()
    rules = sorted((CHART / "files" / "prometheus").glob("*.y*ml"))
    prs = by_kind(docs, "PrometheusRule")
    assert len(prs) == len(rules)
    for pr in prs.values():
        assert pr["spec"]["groups"], pr["metadata"]["name"]
    daemonsets = by_kind(docs, "DaemonSet")
    assert set(daemonsets) == {"cryptex-promtail"}
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["cryptex-promtail"]["data"]["promtail.yaml"])
    assert config["clients"] == [{"url": "http://loki-gateway.monitoring.svc/loki/api/v1/push"}]


def test_notes_render(helm: str) -> None:
    proc = run_helm(helm, "install", "cryptex", str(CHART), "--dry-run=client", "-n", "cryptex")
    if proc.returncode != 0 and "cluster" in proc.stderr:
        pytest.skip("this helm needs a cluster for install --dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "kubectl -n cryptex apply -f k8s/examples/sol-usdc.yaml" in proc.stdout
