"""Static half of "every query names a metric the services export": each metric name in
every rule and dashboard query is defined in cryptex_common.metrics (or is a recording rule,
or a series Prometheus makes itself). The other half, a real Prometheus scraping the running
services, is test_scrape_e2e.py. Also: docs/observability.md documents every metric."""

from __future__ import annotations

import re

import pytest

from tests.observability.exprs import (
    BUILTIN_SERIES,
    REPO,
    exported_series_names,
    promql_metric_names,
    recording_rules,
    referenced_series,
)


def test_every_referenced_metric_is_defined() -> None:
    exported = exported_series_names()
    recorded = {r["record"] for r in recording_rules()}
    used = referenced_series()
    assert len(used) > 30
    unknown = {name: sorted(where) for name, where in used.items()
               if name not in exported and name not in recorded and name not in BUILTIN_SERIES}
    assert not unknown, f"queries name metrics that cryptex_common.metrics does not define: {unknown}"


def test_every_defined_metric_is_used_somewhere() -> None:
    """A metric nobody graphs or alerts on is either dead or missing from a dashboard."""
    exported = exported_series_names()
    used = {exported[name] for name in referenced_series() if name in exported}
    assert set(exported.values()) - used == set()


def test_metric_names_follow_the_conventions() -> None:
    for series, declared in exported_series_names().items():
        assert declared.startswith("cryptex_"), declared
        if declared.endswith("_total"):
            assert series == declared


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (market, le) (rate(cryptex_order_roundtrip_seconds_bucket{market=~"a|b"}[5m]))',
     {"cryptex_order_roundtrip_seconds_bucket"}),
    ('histogram_quantile(0.99, x_bucket) > 0.25 and on (market) y{reason="rate(z)"} offset 5m',
     {"x_bucket", "y"}),
    ('a / (b + (c or d * 0))', {"a", "b", "c", "d"}),
    ('up{job="engine"} == 0 or absent(up{job="engine"})', {"up"}),
    ('count(ALERTS{alertstate="firing"}) or vector(0)', {"ALERTS"}),
    ('max by (market) (deriv(m:rec:rate5m[5m])) > 1e3', {"m:rec:rate5m"}),
    ('sum without (instance) (rate(foo_total[1m] offset 1h)) > bool 2', {"foo_total"}),
])
def test_the_name_extractor(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def _doc() -> str:
    return (REPO / "docs" / "observability.md").read_text()


def test_every_metric_is_documented_with_type_and_labels() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from cryptex_common import metrics

    doc = _doc()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name = value._name + ("_total" if value._type == "counter" else "")
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{name}` |")]
        assert rows, f"docs/observability.md has no table row for {name}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[1] == value._type, (name, cells[1])
        documented = set(re.findall(r"`(\w+)`", cells[2]))
        assert documented == set(value._labelnames), (name, documented)


def test_every_alert_is_documented() -> None:
    from tests.observability.exprs import alerts

    doc = _doc()
    for alert in alerts():
        assert f"[{alert['alert']}](runbooks/{alert['alert']}.md)" in doc
