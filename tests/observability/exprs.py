"""Shared helpers for the observability tests: where the files are, the real tools
(promtool, node + @grafana/lezer-logql), and every query found in the rules and dashboards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
RULES_DIR = MONITORING / "prometheus" / "rules"
RULE_TESTS_DIR = MONITORING / "prometheus" / "tests"
DASHBOARDS_DIR = MONITORING / "grafana" / "dashboards"
RUNBOOKS_DIR = REPO / "docs" / "runbooks"
LOGQL_TOOLS = REPO / ".tools" / "lezer-logql"
LOGQL_PARSE = Path(__file__).resolve().parent / "logql_parse.mjs"
LOGQL_INSTALL = Path(__file__).resolve().parent / "install-logql-parser.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(what: str, available: bool, install: str) -> None:
    """A missing tool fails the test in CI (CI=true) and skips it elsewhere, saying why."""
    if available:
        return
    message = f"{what} is not available; install it with: {install}"
    if in_ci():
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def promtool() -> str:
    path = shutil.which("promtool")
    require("promtool", path is not None,
            "apt-get install -y --no-install-recommends prometheus")
    assert path is not None
    return path


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    require("prometheus", path is not None,
            "apt-get install -y --no-install-recommends prometheus")
    assert path is not None
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, check=False)


def logql_parser_dir() -> Path:
    node = shutil.which("node")
    require("node", node is not None, "apt-get install -y nodejs npm")
    installed = (LOGQL_TOOLS / "node_modules" / "@grafana" / "lezer-logql").is_dir()
    require("@grafana/lezer-logql", installed, str(LOGQL_INSTALL.relative_to(REPO)))
    return LOGQL_TOOLS


def parse_logql(queries: list[str]) -> list[dict[str, Any]]:
    tools = logql_parser_dir()
    proc = subprocess.run(["node", str(LOGQL_PARSE), str(tools)], input=json.dumps(queries),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


# --- rules ------------------------------------------------------------------------------

def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yaml"))


def rules() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def recording_rules() -> list[dict[str, Any]]:
    return [r for r in rules() if "record" in r]


# --- dashboards -------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    where: str  # "dashboard uid / panel title" or "rule name"
    language: str  # "promql" or "logql"
    expr: str


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def dashboard_queries() -> list[Query]:
    out: list[Query] = []
    for name, board in dashboards().items():
        for panel in _panels(board.get("panels") or []):
            for target in panel.get("targets") or []:
                ds_type = (target.get("datasource") or panel.get("datasource") or {}).get("type")
                language = {"prometheus": "promql", "loki": "logql"}[ds_type]
                out.append(Query(f"{name} / {panel.get('title')}", language, target["expr"]))
    return out


def dashboard_variable_queries() -> list[Query]:
    out = []
    for name, board in dashboards().items():
        for var in (board.get("templating") or {}).get("list") or []:
            if var.get("type") == "query":
                out.append(Query(f"{name} / ${var['name']}", "promql-variable", var["query"]))
    return out


def rule_queries() -> list[Query]:
    return [Query(r.get("alert") or r["record"], "promql", r["expr"]) for r in rules()]


def all_promql() -> list[Query]:
    return rule_queries() + [q for q in dashboard_queries() if q.language == "promql"]


# Grafana's variables, replaced by a value of the right kind before parsing.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${market}": "SOL/USDC",
    "$market": "SOL/USDC",
}


def substitute_grafana_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


# --- metric names inside PromQL -----------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A whole identifier (not the tail of a number/duration, not followed by "(" = a function).
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![a-zA-Z0-9_:])(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan", "atan2"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, label matchers, ranges and
    grouping clauses are removed first; identifiers followed by "(" are functions)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,")


def variable_metric_names(query: str) -> set[str]:
    match = _LABEL_VALUES.search(query)
    return {match.group(1)} if match else set()


# Series Prometheus makes itself, allowed in queries.
BUILTIN_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def exported_series_names() -> dict[str, str]:
    """Every series name cryptex_common.metrics can export -> the metric's declared name."""
    from prometheus_client.metrics import MetricWrapperBase

    from cryptex_common import metrics

    out: dict[str, str] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind = value._name, value._type
        if kind == "counter":
            out[f"{name}_total"] = f"{name}_total"
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = name
        elif kind in {"gauge", "summary"}:
            out[name] = name
            if kind == "summary":
                out[f"{name}_sum"] = name
                out[f"{name}_count"] = name
        else:  # pragma: no cover - a new kind needs a decision here
            raise AssertionError(f"unhandled metric type {kind} for {name}")
    return out


def referenced_series() -> dict[str, set[str]]:
    """Series name -> where it is used, over every rule and dashboard query (recording rule
    outputs excluded: they are checked against the rules instead)."""
    used: dict[str, set[str]] = {}
    for q in all_promql():
        for name in promql_metric_names(q.expr):
            used.setdefault(name, set()).add(q.where)
    for q in dashboard_variable_queries():
        for name in variable_metric_names(q.expr):
            used.setdefault(name, set()).add(q.where)
    return used
