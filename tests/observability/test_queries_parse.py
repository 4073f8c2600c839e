"""Every PromQL expression (rules and dashboards) parses with the real promtool, and every
LogQL query of the dashboards parses with Grafana's own LogQL grammar (@grafana/lezer-logql).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.observability.exprs import (
    GRAFANA_VARIABLES,
    all_promql,
    dashboard_queries,
    parse_logql,
    run_promtool,
    substitute_grafana_variables,
)


def _check_promql(tmp_path: Path, exprs: list[str]) -> tuple[int, str]:
    doc = {"groups": [{"name": "parse-check", "rules": [
        {"record": f"parse_check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "exprs.rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = run_promtool("check", "rules", str(path))
    return proc.returncode, proc.stdout + proc.stderr


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    queries = all_promql()
    assert len(queries) > 40
    exprs = [substitute_grafana_variables(q.expr) for q in queries]
    for q, expr in zip(queries, exprs, strict=True):
        assert "$" not in expr, f"{q.where}: unknown Grafana variable in {q.expr!r}"
    code, output = _check_promql(tmp_path, exprs)
    assert code == 0, output
    assert f"SUCCESS: {len(exprs)} rules found" in output


def test_the_promql_check_catches_a_syntax_error(tmp_path: Path) -> None:
    code, output = _check_promql(tmp_path, ["sum by (market (rate(cryptex_trades_total[5m]))"])
    assert code != 0
    assert "parse error" in output


def _logql() -> list[str]:
    return [substitute_grafana_variables(q.expr) for q in dashboard_queries()
            if q.language == "logql"]


def test_every_logql_query_parses() -> None:
    queries = _logql()
    assert queries, "no LogQL query in the dashboards"
    for result in parse_logql(queries):
        assert result["top"] == "LogQL"
        assert not result["errors"], f"LogQL error in {result['query']!r}: {result['errors']}"


@pytest.mark.parametrize("bad", [
    '{level="error" | json',
    '{level="error"} | json | level=~',
    'sum by (service) (rate({level="error"}[5m])',
])
def test_the_logql_check_catches_a_syntax_error(bad: str) -> None:
    [result] = parse_logql([bad])
    assert result["errors"], f"parser accepted {bad!r}"


def test_logql_label_matchers_use_only_the_promtail_labels() -> None:
    """Dashboards select streams only by labels Promtail sets (service, level, market)."""
    import re

    for query in _logql():
        for selector in re.findall(r"\{([^}]*)\}", query):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in {"service", "level", "market"}, (query, label)


def test_grafana_variable_table_covers_what_dashboards_use() -> None:
    import re

    used = set()
    for q in dashboard_queries():
        used |= set(re.findall(r"\$\{?\w+\}?", q.expr))
    assert used <= set(GRAFANA_VARIABLES), used - set(GRAFANA_VARIABLES)


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.observability.exprs import require

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and promtool is not available"):
        require("promtool", False, "apt-get install -y --no-install-recommends prometheus")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        require("promtool", False, "apt-get install -y --no-install-recommends prometheus")
    require("promtool", True, "unused")
