"""Zero series for the label values dbproc owns, so rules and dashboards see every dbproc
metric before its first event (docs/observability.md: each service initialises its own)."""

from __future__ import annotations

import cryptex_common.metrics as metrics

SERVICE = "dbproc"
TABLES = ("trades", "fills", "orders", "candles")  # the `table` values of DBPROC_ROWS


def init_service_metrics() -> None:
    for table in TABLES:
        metrics.DBPROC_ROWS.labels(table)
    metrics.REDIS_ERRORS.labels(SERVICE)
    metrics.POSTGRES_ERRORS.labels(SERVICE)


def init_market_metrics(market: str) -> None:
    metrics.DBPROC_LAG.labels(market)
    metrics.DBPROC_DEAD_LETTERS.labels(market)
