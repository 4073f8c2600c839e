"""Dashboards as code: the committed JSON is exactly what generate.py produces, uids are
stable, and each dashboard has what the issue asks for."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import pytest

from tests.observability.exprs import DASHBOARDS_DIR, MONITORING, dashboard_queries, dashboards

EXPECTED_UIDS = {"cryptex-overview", "cryptex-engine", "cryptex-wsgateway", "cryptex-dbproc"}


def _generate_module() -> ModuleType:
    pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk")
    spec = importlib.util.spec_from_file_location(
        "cryptex_grafana_generate", MONITORING / "grafana" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_committed_json_matches_a_fresh_generation() -> None:
    rendered = _generate_module().render_all()
    committed = {p.name: p.read_text() for p in DASHBOARDS_DIR.glob("*.json")}
    assert set(committed) == set(rendered), "dashboards/ holds files generate.py does not make"
    for name, text in rendered.items():
        assert committed[name] == text, (
            f"{name} is stale: run .venv/bin/python monitoring/grafana/generate.py")


def test_generation_is_deterministic() -> None:
    module = _generate_module()
    assert module.render_all() == module.render_all()


def test_check_mode_reports_drift(tmp_path) -> None:
    module = _generate_module()
    assert module.main(["--out", str(tmp_path)]) == 0
    assert module.main(["--check", "--out", str(tmp_path)]) == 0
    first = sorted(tmp_path.glob("*.json"))[0]
    first.write_text(first.read_text().replace("Cryptex", "Kryptex"))
    assert module.main(["--check", "--out", str(tmp_path)]) == 1


def test_uids_are_stable_and_match_file_names() -> None:
    boards = dashboards()
    assert {b["uid"] for b in boards.values()} == EXPECTED_UIDS
    for name, board in boards.items():
        assert name == f"{board['uid']}.json"


def _panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_panel_ids_unique_and_datasources_are_variables() -> None:
    for name, board in dashboards().items():
        panels = board["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["loki"]["query"] == "loki"
        for panel in _panels(board):
            assert panel["datasource"]["uid"] in {"${datasource}", "${loki}"}, panel["title"]
            assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]


def test_overview_covers_orders_latency_rejects_trades_volume() -> None:
    exprs = " ".join(q.expr for q in dashboard_queries() if q.where.startswith("cryptex-overview"))
    for metric in ("cryptex_orders_accepted_total", "cryptex_order_roundtrip_seconds_bucket",
                   "cryptex_orders_rejected_total", "cryptex_trades_total",
                   "cryptex_trade_volume_quote_total"):
        assert metric in exprs
    assert "sum by (market)" in exprs


def test_engine_dashboard_is_per_market() -> None:
    board = dashboards()["cryptex-engine.json"]
    market = {v["name"]: v for v in board["templating"]["list"]}["market"]
    assert market["type"] == "query" and market["multi"] is False
    for panel in _panels(board):
        for target in panel["targets"]:
            if "up{" not in target["expr"]:
                assert '"$market"' in target["expr"], (panel["title"], target["expr"])


def test_every_dashboard_has_a_loki_logs_panel() -> None:
    for name, board in dashboards().items():
        logs = [p for p in _panels(board) if p["type"] == "logs"]
        assert logs, f"{name}: no logs panel"
        assert all(p["datasource"]["type"] == "loki" for p in logs)


def test_json_is_plain_grafana_model() -> None:
    for board in dashboards().values():
        json.dumps(board)  # plain JSON types only
        assert board["schemaVersion"] >= 36
        assert board["title"].startswith("Cryptex / ")
