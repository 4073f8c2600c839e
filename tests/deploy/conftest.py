"""Helpers for the chart tests: a real helm binary, and renders cached per session.

helm comes from scripts/get-helm.sh (.tools/bin/helm) or $HELM. Without it the chart tests
skip, except in CI (CI=true), where a missing helm is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cryptex"
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor",
                   "monitoring.coreos.com/v1/PrometheusRule")
KUBE_VERSION = "1.31.0"


def helm_path() -> str | None:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_path()
    if path is None:
        message = "no helm binary: run scripts/get-helm.sh (installs .tools/bin/helm) or set HELM"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120,
                          check=False)


@cache
def _render(helm: str, values: tuple[str, ...], api_versions: tuple[str, ...]) -> str:
    args = ["template", "cryptex", str(CHART), "--namespace", "cryptex", "--include-crds",
            "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", str(CHART / v)]
    for api in api_versions:
        args += ["--api-versions", api]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(helm: str, *values: str, monitoring: bool = False) -> list[dict[str, Any]]:
    text = _render(helm, values, MONITORING_APIS if monitoring else ())
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
