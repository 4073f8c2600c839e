"""k8s/: the plain manifests for installs without Helm agree with the chart."""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.deploy.conftest import CHART, ROOT, render


def load(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]


def test_rbac_equals_the_charts(helm: str) -> None:
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in render(helm)
                if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                 "ClusterRoleBinding") and "promtail" not in d["metadata"]["name"]}
    plain = {(d["kind"], d["metadata"]["name"]): d for d in load("k8s/rbac.yaml")}
    assert plain == rendered
    for doc in plain.values():
        kubernetes_validate.validate(doc, "1.31", strict=True)


def test_crds_equal_the_charts() -> None:
    for name in ("markets.cryptex.io.yaml", "kopfpeerings.kopf.dev.yaml"):
        assert load(f"k8s/crd/{name}") == load(
            str((CHART / "charts/operator/crds" / name).relative_to(ROOT)))
        for doc in load(f"k8s/crd/{name}"):
            kubernetes_validate.validate(doc, "1.31", strict=True)


def test_namespace() -> None:
    (ns,) = load("k8s/namespace.yaml")
    kubernetes_validate.validate(ns, "1.31", strict=True)
    assert ns["metadata"]["name"] == "cryptex"
