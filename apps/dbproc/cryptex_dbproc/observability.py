"""dbproc's metrics and its one log line per round.

Zero series for the label values dbproc owns, so rules and dashboards see every dbproc
metric before its first event (docs/observability.md: each service initialises its own).
Invariants: rows are counted and the round logged only after its commit and XACK
(`observe_round`); a market's lag is set only from events committed (`observe_lag`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import cryptex_common.metrics as metrics
from cryptex_common import stream_ids

if TYPE_CHECKING:
    from cryptex_dbproc.reader import RawRound
    from cryptex_dbproc.rounds import RoundResult

log = logging.getLogger("cryptex_dbproc.processor")  # the name log lines always carried
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


def observe_lag(newest_ts_ms: dict[str, int]) -> None:
    """Per market, the age of the newest event just committed."""
    now_s = time.time()
    for market, ts_ms in newest_ts_ms.items():
        metrics.DBPROC_LAG.labels(market).set(max(0.0, now_s - ts_ms / 1000))


def observe_round(raw: RawRound, result: RoundResult, started: float) -> None:
    """Rows written, round duration (since `started`, perf_counter) and the round's log line."""
    for name in TABLES:
        metrics.DBPROC_ROWS.labels(name).inc(getattr(result.stats, name))
    metrics.DBPROC_BATCH_SECONDS.observe(time.perf_counter() - started)
    # INFO, one line per round: with the engine's seq in each event, the last stream id per
    # market lets an order be followed from the engine's batch into PostgreSQL
    log.info("round written", extra={
        "trades": result.stats.trades, "orders": result.stats.orders,
        "deadLetters": result.dead_letters, "skipped": result.skipped,
        "lastIds": {m: stream_ids.text(entries[-1][0]) for m, entries in raw.items() if entries}})
