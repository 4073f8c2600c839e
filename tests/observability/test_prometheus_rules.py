"""Alert and recording rules with the real promtool: they load, their unit tests pass, the
unit tests cover every rule (firing and not firing), and each alert has a runbook."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.observability.exprs import (
    MONITORING,
    REPO,
    RULE_TESTS_DIR,
    RUNBOOKS_DIR,
    alerts,
    recording_rules,
    rule_files,
    run_promtool,
)

RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.test.yaml"))


def test_rule_files_pass_promtool_check_rules() -> None:
    assert rule_files(), "no rule files under monitoring/prometheus/rules"
    proc = run_promtool("check", "rules", *map(str, rule_files()))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TEST_FILES
    proc = run_promtool("test", "rules", *(p.name for p in RULE_TEST_FILES), cwd=RULE_TESTS_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests are not vacuous: raising one alert threshold makes them fail."""
    shutil.copytree(MONITORING / "prometheus", tmp_path / "prometheus")
    rules = tmp_path / "prometheus" / "rules" / "cryptex.rules.yaml"
    text = rules.read_text()
    assert "market:cryptex_order_roundtrip_seconds:p99_5m > 0.25" in text
    rules.write_text(text.replace("market:cryptex_order_roundtrip_seconds:p99_5m > 0.25",
                                  "market:cryptex_order_roundtrip_seconds:p99_5m > 0.75"))
    tests_dir = tmp_path / "prometheus" / "tests"
    proc = run_promtool("test", "rules", *(p.name for p in RULE_TEST_FILES), cwd=tests_dir)
    assert proc.returncode != 0
    assert "CryptexOrderLatencyP99High" in proc.stdout + proc.stderr


def _unit_tests() -> list[dict]:
    out = []
    for path in RULE_TEST_FILES:
        out.extend(yaml.safe_load(path.read_text())["tests"])
    return out


@pytest.mark.parametrize("alert", [a["alert"] for a in alerts()])
def test_every_alert_has_a_firing_and_a_not_firing_unit_test(alert: str) -> None:
    cases = [c for t in _unit_tests() for c in t.get("alert_rule_test", [])
             if c["alertname"] == alert]
    assert any(c.get("exp_alerts") for c in cases), f"{alert}: no unit test where it fires"
    assert any(not c.get("exp_alerts") for c in cases), f"{alert}: no not-firing unit test"


@pytest.mark.parametrize("record", [r["record"] for r in recording_rules()])
def test_every_recording_rule_has_a_value_test(record: str) -> None:
    exprs = [c["expr"] for t in _unit_tests() for c in t.get("promql_expr_test", [])]
    assert any(re.search(rf"(?<![\w:]){re.escape(record)}(?![\w:])", e) for e in exprs), (
        f"{record}: no promql_expr_test evaluates it"
    )


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_has_severity_annotations_and_a_runbook(alert: dict) -> None:
    name = alert["alert"]
    assert name.startswith("Cryptex")
    assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    notes = alert["annotations"]
    assert notes["summary"].strip() and notes["description"].strip()
    assert notes["runbook_url"] == f"docs/runbooks/{name}.md"
    runbook = REPO / notes["runbook_url"]
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {name}\n")
    for section in ("## Meaning", "## Checks", "## Actions"):
        assert section in text, f"{runbook.name}: no {section!r} section"
    assert f"({name}.md)" in (RUNBOOKS_DIR / "README.md").read_text()


def test_no_runbook_without_an_alert() -> None:
    names = {a["alert"] for a in alerts()}
    pages = {p.stem for p in RUNBOOKS_DIR.glob("*.md")} - {"README"}
    assert pages == names


# --- local Prometheus configuration ------------------------------------------------------

def test_committed_prometheus_yml_is_valid() -> None:
    config = MONITORING / "prometheus" / "prometheus.yml"
    proc = run_promtool("check", "config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert jobs == {"api", "engine", "wsgateway", "dbproc"}


def test_local_prometheus_script_writes_a_valid_config_from_port_files(tmp_path: Path) -> None:
    run_promtool("--version")  # fail/skip early without promtool
    state = tmp_path / "state"
    (state / "ports").mkdir(parents=True)
    (state / "ports" / "engine-SOL_USDC.port").write_text("40001\n")
    (state / "ports" / "engine-BTC_USDC.port").write_text("40002")
    (state / "ports" / "dbproc.port").write_text("40003\n")
    (state / "ports" / "wsgateway.port").write_text("40004")
    env = {"PATH": "/usr/bin:/bin", "CRYPTEX_STATE_DIR": str(state)}
    proc = subprocess.run([str(REPO / "scripts" / "local-prometheus.sh"), "--write-config"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    config = state / "prometheus" / "prometheus.yml"
    assert proc.stdout.strip() == str(config)
    check = run_promtool("check", "config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout

    engines = json.loads((state / "prometheus" / "targets" / "engine.json").read_text())
    assert sorted((g["labels"]["process"], g["targets"]) for g in engines) == [
        ("engine-BTC_USDC", ["127.0.0.1:40002"]),
        ("engine-SOL_USDC", ["127.0.0.1:40001"]),
    ]
    dbproc = json.loads((state / "prometheus" / "targets" / "dbproc.json").read_text())
    assert dbproc == [{"targets": ["127.0.0.1:40003"], "labels": {"process": "dbproc"}}]
    # api and the gateway serve /metrics on their ops ports only: from their .port files,
    # never a guessed public port (no api.port here: no api target)
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    for job in ("api", "wsgateway"):
        assert "static_configs" not in jobs[job], job
    targets = state / "prometheus" / "targets"
    assert json.loads((targets / "api.json").read_text()) == []
    assert json.loads((targets / "wsgateway.json").read_text()) == [
        {"targets": ["127.0.0.1:40004"], "labels": {"process": "wsgateway"}}]
    (state / "ports" / "api.port").write_text("40005\n")
    proc = subprocess.run([str(REPO / "scripts" / "local-prometheus.sh"), "--write-config"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((targets / "api.json").read_text()) == [
        {"targets": ["127.0.0.1:40005"], "labels": {"process": "api"}}]
