"""Cryptex Grafana dashboards as code (grafana-foundation-sdk), generated to committed JSON.

    .venv/bin/python monitoring/grafana/generate.py          # rewrite dashboards/*.json
    .venv/bin/python monitoring/grafana/generate.py --check  # exit 1 if the JSON is stale

Every metric used here is defined in libs/common/cryptex_common/metrics.py; the tests in
tests/observability/ check each PromQL query with promtool, each LogQL query with
@grafana/lezer-logql, that each metric name exists, and that the JSON is up to date.

Datasources are template variables (`datasource` for Prometheus, `loki` for Loki), so the
dashboards work with whatever datasource uids a Grafana has. Dashboard uids are stable.
"""

# PromQL stays one query per line, as it reads in Grafana.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import logs, loki, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    GridPos,
    VariableRefresh,
    VariableSort,
)

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

PROM = DataSourceRef(type_val="prometheus", uid="${datasource}")
LOKI = DataSourceRef(type_val="loki", uid="${loki}")
TAGS = ["cryptex"]

# A PromQL target: (expr, legend). `$__rate_interval`, `$market` are Grafana variables.
Target = tuple[str, str]


class _Ids:
    """Stable panel ids: numbered in the order panels are added."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def _prom_targets(targets: Iterable[Target]) -> list[prometheus.Dataquery]:
    out = []
    for i, (expr, legend) in enumerate(targets):
        out.append(
            prometheus.Dataquery()
            .expr(expr)
            .legend_format(legend)
            .ref_id(chr(ord("A") + i))
            .datasource(PROM)
        )
    return out


def ts(ids: _Ids, title: str, targets: Iterable[Target], unit: str = "short",
       description: str = "", w: int = 12, h: int = 8) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .id(ids.next())
        .title(title)
        .datasource(PROM)
        .unit(unit)
        .grid_pos(GridPos(h=h, w=w))
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if description:
        panel = panel.description(description)
    for target in _prom_targets(targets):
        panel = panel.with_target(target)
    return panel


def single(ids: _Ids, title: str, expr: str, unit: str = "short", description: str = "",
           w: int = 6, h: int = 4) -> stat.Panel:
    panel = (
        stat.Panel()
        .id(ids.next())
        .title(title)
        .datasource(PROM)
        .unit(unit)
        .grid_pos(GridPos(h=h, w=w))
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(_prom_targets([(expr, title)])[0])
    )
    if description:
        panel = panel.description(description)
    return panel


def log_panel(ids: _Ids, title: str, expr: str, w: int = 24, h: int = 10) -> logs.Panel:
    return (
        logs.Panel()
        .id(ids.next())
        .title(title)
        .datasource(LOKI)
        .grid_pos(GridPos(h=h, w=w))
        .show_time(True)
        .wrap_log_message(True)
        .enable_log_details(True)
        .sort_order(common.LogsSortOrder.DESCENDING)
        .with_target(loki.Dataquery().expr(expr).ref_id("A").datasource(LOKI).max_lines(500))
    )


def log_rate(ids: _Ids, title: str, expr: str, legend: str, w: int = 24,
             h: int = 6) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .id(ids.next())
        .title(title)
        .datasource(LOKI)
        .unit("short")
        .grid_pos(GridPos(h=h, w=w))
        .with_target(
            loki.Dataquery().expr(expr).legend_format(legend).ref_id("A").datasource(LOKI)
        )
    )


def _base(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("utc")
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(dash.DatasourceVariable("loki").label("Loki").type("loki"))
    )


def _market_variable(multi: bool) -> dash.QueryVariable:
    var = (
        dash.QueryVariable("market")
        .label("Market")
        .datasource(PROM)
        .query("label_values(cryptex_engine_commands_total, market)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        var = var.all_value(".*")
    return var


# --- dashboards -----------------------------------------------------------------------------

def exchange_overview() -> dash.Dashboard:
    ids = _Ids()
    m = 'market=~"$market"'
    d = _base("cryptex-overview", "Cryptex / Exchange overview",
              "Orders, latency, rejects, trades and volume by market; HTTP; errors.")
    d = d.with_variable(_market_variable(multi=True))
    d = d.with_row(dash.Row("Now").id(ids.next()))
    d = d.with_panel(single(ids, "Orders/s", f"sum(rate(cryptex_orders_accepted_total{{{m}}}[$__rate_interval]))", "reqps"))
    d = d.with_panel(single(ids, "Trades/s", f"sum(rate(cryptex_trades_total{{{m}}}[$__rate_interval]))", "short"))
    d = d.with_panel(single(ids, "Order p99 (5m)", f"max(market:cryptex_order_roundtrip_seconds:p99_5m{{{m}}})", "s"))
    d = d.with_panel(single(ids, "Firing alerts", 'count(ALERTS{alertname=~"Cryptex.*", alertstate="firing"}) or vector(0)', "short"))
    d = d.with_row(dash.Row("Orders").id(ids.next()))
    d = d.with_panel(ts(ids, "Orders accepted/s by market", [
        (f"sum by (market) (rate(cryptex_orders_accepted_total{{{m}}}[$__rate_interval]))", "{{market}}"),
    ], "reqps"))
    d = d.with_panel(ts(ids, "Order round trip (API → engine → API)", [
        (f"histogram_quantile(0.99, sum by (market, le) (rate(cryptex_order_roundtrip_seconds_bucket{{{m}}}[$__rate_interval])))", "p99 {{market}}"),
        (f"histogram_quantile(0.5, sum by (market, le) (rate(cryptex_order_roundtrip_seconds_bucket{{{m}}}[$__rate_interval])))", "p50 {{market}}"),
    ], "s"))
    d = d.with_panel(ts(ids, "Rejects/s by market and reason", [
        (f"sum by (market, reason) (rate(cryptex_orders_rejected_total{{{m}}}[$__rate_interval]))", "{{market}} {{reason}}"),
    ], "reqps"))
    d = d.with_panel(ts(ids, "Reject ratio (5m)", [
        (f"market:cryptex_orders_reject_ratio:ratio_rate5m{{{m}}}", "{{market}}"),
    ], "percentunit"))
    d = d.with_panel(ts(ids, "Reply timeouts/s (answered 202)", [
        (f"sum by (market) (rate(cryptex_order_reply_timeouts_total{{{m}}}[$__rate_interval]))", "{{market}}"),
    ], "reqps"))
    d = d.with_panel(ts(ids, "Engine commands/s by market", [
        (f"sum by (market) (rate(cryptex_engine_commands_total{{{m}}}[$__rate_interval]))", "{{market}}"),
    ], "ops"))
    d = d.with_row(dash.Row("Trades").id(ids.next()))
    d = d.with_panel(ts(ids, "Trades/s by market", [
        (f"sum by (market) (rate(cryptex_trades_total{{{m}}}[$__rate_interval]))", "{{market}}"),
    ], "ops"))
    d = d.with_panel(ts(ids, "Volume (quote units/s) by market", [
        (f"sum by (market) (rate(cryptex_trade_volume_quote_total{{{m}}}[$__rate_interval]))", "{{market}}"),
    ], "short"))
    d = d.with_row(dash.Row("HTTP API").id(ids.next()))
    d = d.with_panel(ts(ids, "Requests/s by route and status", [
        ("sum by (route, status) (rate(cryptex_http_requests_total[$__rate_interval]))", "{{route}} {{status}}"),
    ], "reqps"))
    d = d.with_panel(ts(ids, "Request latency p99 by route", [
        ("histogram_quantile(0.99, sum by (route, le) (rate(cryptex_http_request_duration_seconds_bucket[$__rate_interval])))", "{{route}}"),
    ], "s"))
    d = d.with_panel(ts(ids, "Redis / Postgres errors/s by service", [
        ("sum by (service) (rate(cryptex_redis_errors_total[$__rate_interval]))", "redis {{service}}"),
        ("sum by (service) (rate(cryptex_postgres_errors_total[$__rate_interval]))", "postgres {{service}}"),
    ], "ops"))
    d = d.with_panel(ts(ids, "Redis memory used / maxmemory", [
        ("cryptex_redis_memory_used:ratio", "used / maxmemory"),
    ], "percentunit"))
    d = d.with_row(dash.Row("Logs").id(ids.next()))
    d = d.with_panel(log_rate(ids, "Error log lines/s by service",
                              'sum by (service) (rate({level=~"error|critical"}[$__interval]))',
                              "{{service}}"))
    d = d.with_panel(log_panel(ids, "Errors (all services)",
                               '{level=~"error|critical"} | json'))
    return d


def engine() -> dash.Dashboard:
    ids = _Ids()
    m = 'market="$market"'
    d = _base("cryptex-engine", "Cryptex / Matching engine",
              "One market's engine: commands, batches, matching, settling, stream lag, book.")
    d = d.with_variable(_market_variable(multi=False))
    d = d.with_row(dash.Row("$market").id(ids.next()))
    d = d.with_panel(single(ids, "Engine up", 'min(up{job="engine"})', "short",
                            "0 when any engine target cannot be scraped."))
    d = d.with_panel(single(ids, "Last sequence", f"max(cryptex_engine_last_seq{{{m}}})"))
    d = d.with_panel(single(ids, "Snapshot age", f"max(cryptex_engine_snapshot_age_seconds{{{m}}})", "s"))
    d = d.with_panel(single(ids, "Fenced settles (1h)", f"sum(increase(cryptex_engine_fenced_total{{{m}}}[1h]))"))
    d = d.with_row(dash.Row("Throughput").id(ids.next()))
    d = d.with_panel(ts(ids, "Commands/s by type", [
        (f"sum by (type) (rate(cryptex_engine_commands_total{{{m}}}[$__rate_interval]))", "{{type}}"),
    ], "ops"))
    d = d.with_panel(ts(ids, "Batch size", [
        (f"histogram_quantile(0.5, sum by (le) (rate(cryptex_engine_batch_size_bucket{{{m}}}[$__rate_interval])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(cryptex_engine_batch_size_bucket{{{m}}}[$__rate_interval])))", "p99"),
        (f"sum(rate(cryptex_engine_batch_size_sum{{{m}}}[$__rate_interval])) / sum(rate(cryptex_engine_batch_size_count{{{m}}}[$__rate_interval]))", "mean"),
    ], "short"))
    d = d.with_panel(ts(ids, "Match and settle time per batch (p99)", [
        (f"histogram_quantile(0.99, sum by (le) (rate(cryptex_engine_match_seconds_bucket{{{m}}}[$__rate_interval])))", "match p99"),
        (f"histogram_quantile(0.99, sum by (le) (rate(cryptex_engine_settle_seconds_bucket{{{m}}}[$__rate_interval])))", "settle p99"),
    ], "s"))
    d = d.with_panel(ts(ids, "Trades/s and rejects/s", [
        (f"sum(rate(cryptex_trades_total{{{m}}}[$__rate_interval]))", "trades"),
        (f"sum by (reason) (rate(cryptex_orders_rejected_total{{{m}}}[$__rate_interval]))", "rejected {{reason}}"),
    ], "ops"))
    d = d.with_row(dash.Row("Stream").id(ids.next()))
    d = d.with_panel(ts(ids, "Commands waiting in the stream", [
        (f"max(cryptex_engine_stream_lag_entries{{{m}}})", "entries"),
    ], "short"))
    d = d.with_panel(ts(ids, "Age of the oldest unprocessed command", [
        (f"max(cryptex_engine_stream_oldest_pending_age_seconds{{{m}}})", "age"),
    ], "s"))
    d = d.with_row(dash.Row("Book").id(ids.next()))
    d = d.with_panel(ts(ids, "Price levels by side", [
        (f"max by (side) (cryptex_engine_book_levels{{{m}}})", "{{side}}"),
    ], "short"))
    d = d.with_panel(ts(ids, "Resting orders", [
        (f"max(cryptex_engine_resting_orders{{{m}}})", "resting"),
    ], "short"))
    d = d.with_row(dash.Row("Logs").id(ids.next()))
    d = d.with_panel(log_panel(ids, "Engine warnings and errors",
                               '{service="engine", market="$market"} | json | level=~"warning|error|critical"'))
    return d


def wsgateway() -> dash.Dashboard:
    ids = _Ids()
    d = _base("cryptex-wsgateway", "Cryptex / WebSocket gateway",
              "Connections, subscriptions, messages, slow clients, fan-out delay.")
    d = d.with_panel(single(ids, "Connections", "sum(cryptex_ws_connections)"))
    d = d.with_panel(single(ids, "Subscriptions", "sum(cryptex_ws_subscriptions)"))
    d = d.with_panel(single(ids, "Messages/s", "sum(rate(cryptex_ws_messages_sent_total[$__rate_interval]))", "ops"))
    d = d.with_panel(single(ids, "Slow clients dropped (1h)", "sum(increase(cryptex_ws_slow_clients_dropped_total[1h]))"))
    d = d.with_panel(ts(ids, "Connections per gateway", [
        ("sum by (instance) (cryptex_ws_connections)", "{{instance}}"),
    ], "short"))
    d = d.with_panel(ts(ids, "Subscriptions by stream type", [
        ("sum by (stream_type) (cryptex_ws_subscriptions)", "{{stream_type}}"),
    ], "short"))
    d = d.with_panel(ts(ids, "Messages sent/s by stream type", [
        ("sum by (stream_type) (rate(cryptex_ws_messages_sent_total[$__rate_interval]))", "{{stream_type}}"),
    ], "ops"))
    d = d.with_panel(ts(ids, "Fan-out delay (engine publish → send) p99", [
        ("histogram_quantile(0.99, sum by (stream_type, le) (rate(cryptex_ws_fanout_delay_seconds_bucket[$__rate_interval])))", "{{stream_type}}"),
    ], "s"))
    d = d.with_panel(ts(ids, "Slow clients dropped/s", [
        ("sum(rate(cryptex_ws_slow_clients_dropped_total[$__rate_interval]))", "dropped"),
    ], "ops"))
    d = d.with_panel(ts(ids, "Depth re-snapshots/s by market", [
        ("sum by (market) (rate(cryptex_ws_resnapshots_total[$__rate_interval]))", "{{market}}"),
    ], "ops"))
    d = d.with_panel(log_panel(ids, "Gateway warnings and errors",
                               '{service="wsgateway", level=~"warning|error|critical"} | json'))
    return d


def dbproc() -> dash.Dashboard:
    ids = _Ids()
    d = _base("cryptex-dbproc", "Cryptex / DB processor",
              "Rows written, batch time, lag behind the engines, dead letters, DB errors.")
    d = d.with_panel(ts(ids, "Rows written/s by table", [
        ("sum by (table) (rate(cryptex_dbproc_rows_written_total[$__rate_interval]))", "{{table}}"),
    ], "ops"))
    d = d.with_panel(ts(ids, "Batch write time", [
        ("histogram_quantile(0.99, sum by (le) (rate(cryptex_dbproc_batch_seconds_bucket[$__rate_interval])))", "p99"),
        ("histogram_quantile(0.5, sum by (le) (rate(cryptex_dbproc_batch_seconds_bucket[$__rate_interval])))", "p50"),
    ], "s"))
    d = d.with_panel(ts(ids, "Lag by market (age of the newest event written)", [
        ("max by (market) (cryptex_dbproc_lag_seconds)", "{{market}}"),
    ], "s"))
    d = d.with_panel(ts(ids, "Dead letters/s by market", [
        ("sum by (market) (rate(cryptex_dbproc_dead_letters_total[$__rate_interval]))", "{{market}}"),
    ], "ops"))
    d = d.with_panel(ts(ids, "PostgreSQL and Redis errors/s (dbproc)", [
        ('sum(rate(cryptex_postgres_errors_total{service="dbproc"}[$__rate_interval]))', "postgres"),
        ('sum(rate(cryptex_redis_errors_total{service="dbproc"}[$__rate_interval]))', "redis"),
    ], "ops", w=24))
    d = d.with_panel(log_panel(ids, "dbproc warnings and errors",
                               '{service="dbproc", level=~"warning|error|critical"} | json'))
    return d


DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "cryptex-overview": exchange_overview,
    "cryptex-engine": engine,
    "cryptex-wsgateway": wsgateway,
    "cryptex-dbproc": dbproc,
}


def render(build: Callable[[], dash.Dashboard]) -> str:
    model = build().build()
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": render(build) for uid, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    rendered = render_all()
    if args.check:
        stale = [name for name, text in rendered.items()
                 if not (args.out / name).exists() or (args.out / name).read_text() != text]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in rendered)
        for name in stale:
            print(f"stale: {args.out / name} (run monitoring/grafana/generate.py)", file=sys.stderr)
        for name in extra:
            print(f"not generated by generate.py: {args.out / name}", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
    return 0


def load(name: str) -> dict[str, Any]:
    return json.loads((OUT_DIR / name).read_text())


if __name__ == "__main__":
    raise SystemExit(main())
