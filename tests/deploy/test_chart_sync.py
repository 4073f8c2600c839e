"""The chart's copies (helpers in each subchart, monitoring files) equal their sources.

If monitoring/ has no dashboards or rules yet, there is nothing to copy and nothing to
check beyond that; whatever JSON/YAML exists must parse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "cryptex" / "files"


def test_copies_are_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "charts" / "sync.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"run `python charts/sync.py`:\n{proc.stderr}"


def test_every_subchart_carries_the_helpers() -> None:
    lib = (ROOT / "charts/cryptex/templates/_lib.tpl").read_text()
    subcharts = [p for p in (ROOT / "charts/cryptex/charts").iterdir() if p.is_dir()]
    assert {p.name for p in subcharts} == {"api", "wsgateway", "engine", "dbproc", "operator"}
    for sub in subcharts:
        assert (sub / "templates/_lib.tpl").read_text() == lib, sub.name


def test_packaged_monitoring_files_parse() -> None:
    for path in (FILES / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard.get("title") and dashboard.get("uid"), path.name
    for path in (FILES / "prometheus").glob("*.y*ml"):
        groups = yaml.safe_load(path.read_text())["groups"]
        assert all(g.get("name") and g.get("rules") for g in groups), path.name
    for path in (FILES / "promtail").glob("*.y*ml"):
        assert yaml.safe_load(path.read_text())["scrape_configs"], path.name
