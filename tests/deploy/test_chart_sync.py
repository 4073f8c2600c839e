"""The chart's copies of the monitoring files equal their sources; the shared template helpers
exist once, in the library chart every subchart depends on (no copies to keep in step).

If monitoring/ has no dashboards or rules yet, there is nothing to copy and nothing to
check beyond that; whatever JSON/YAML exists must parse.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from tests.deploy.conftest import CHART, run_helm

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "cryptex" / "files"


def test_copies_are_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "charts" / "sync.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"run `python charts/sync.py`:\n{proc.stderr}"


def test_helpers_live_once_in_the_library_chart() -> None:
    """One library chart defines the helpers; the umbrella and every subchart depend on it,
    each subchart through a symlink to that one directory, and no chart defines a helper of
    its own under the library's names (Helm's template names are global: a stale copy would
    silently win or lose)."""
    charts = ROOT / "charts" / "cryptex"
    lib_dir = charts / "charts" / "cryptex-lib"
    lib_meta = yaml.safe_load((lib_dir / "Chart.yaml").read_text())
    assert lib_meta["type"] == "library" and lib_meta["name"] == "cryptex-lib"
    lib_names = set(re.findall(r'define "([^"]+)"', (lib_dir / "templates" / "_lib.tpl").read_text()))
    assert {"cryptex.fullname", "cryptex.labels", "cryptex.image", "cryptex.probes"} <= lib_names

    umbrella = yaml.safe_load((charts / "Chart.yaml").read_text())
    assert {"name": "cryptex-lib", "version": lib_meta["version"]} in umbrella["dependencies"]
    subcharts = [p for p in (charts / "charts").iterdir() if p.is_dir() and p != lib_dir]
    assert {p.name for p in subcharts} == {"api", "wsgateway", "engine", "dbproc", "operator"}
    for sub in subcharts:
        deps = yaml.safe_load((sub / "Chart.yaml").read_text()).get("dependencies", [])
        assert {"name": "cryptex-lib", "version": lib_meta["version"],
                "repository": "file://../cryptex-lib"} in deps, sub.name
        link = sub / "charts" / "cryptex-lib"
        assert link.is_symlink() and link.resolve() == lib_dir.resolve(), sub.name
    templates = [Path(d) / f for d, _, files in os.walk(charts) for f in files  # not via symlinks
                 if Path(d).name == "templates" and lib_dir not in Path(d).parents]
    assert len(templates) > 20, templates
    for tpl in templates:
        own = set(re.findall(r'define "([^"]+)"', tpl.read_text()))
        assert not own & lib_names, f"{tpl} redefines {own & lib_names}: use the library's"
        assert tpl.name != "_lib.tpl", f"{tpl}: a copy of the library's helpers"


def test_packaged_monitoring_files_parse() -> None:
    for path in (FILES / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard.get("title") and dashboard.get("uid"), path.name
    for path in (FILES / "prometheus").glob("*.y*ml"):
        groups = yaml.safe_load(path.read_text())["groups"]
        assert all(g.get("name") and g.get("rules") for g in groups), path.name
    for path in (FILES / "promtail").glob("*.y*ml"):
        assert yaml.safe_load(path.read_text())["scrape_configs"], path.name


def test_packaged_chart_carries_the_library(helm: str, tmp_path: Path) -> None:
    """`helm package` stores the library's contents where the symlinks were, and the packaged
    chart renders the same workloads as the source tree."""
    proc = run_helm(helm, "package", str(CHART), "-d", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("cryptex-*.tgz")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for sub in ("api", "wsgateway", "engine", "dbproc", "operator"):
        lib = members[f"cryptex/charts/{sub}/charts/cryptex-lib/templates/_lib.tpl"]
        assert lib.isfile() and not lib.issym(), sub
    packaged = run_helm(helm, "template", "cryptex", str(archive), "--namespace", "cryptex")
    source = run_helm(helm, "template", "cryptex", str(CHART), "--namespace", "cryptex")
    assert packaged.returncode == 0, packaged.stderr

    def workloads(text: str) -> list[tuple[str, str]]:
        docs = [d for d in yaml.safe_load_all(text) if d]
        return sorted((d["kind"], d["metadata"]["name"]) for d in docs)

    assert workloads(packaged.stdout) == workloads(source.stdout)
