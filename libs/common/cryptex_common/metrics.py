"""Every Prometheus metric Cryptex exports, defined once (docs/observability.md lists them).

Labels are bounded: market, route, method, status, reason, type, side, table, stream_type.
Never a user id or an order id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# --- API ------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "cryptex_http_requests_total", "HTTP requests served", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "cryptex_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=_FAST,
)
ORDERS_ACCEPTED = Counter(
    "cryptex_orders_accepted_total", "Orders accepted and queued by the API", ["market"]
)
ORDERS_REJECTED = Counter(
    "cryptex_orders_rejected_total", "Orders rejected (API or engine)", ["market", "reason"]
)
ORDER_ROUNDTRIP = Histogram(
    "cryptex_order_roundtrip_seconds",
    "API enqueue to engine reply received",
    ["market"],
    buckets=_FAST,
)
ORDER_REPLY_TIMEOUTS = Counter(
    "cryptex_order_reply_timeouts_total", "Orders answered 202 after the reply wait", ["market"]
)
REDIS_WAIT_SHORTFALL = Counter(
    "cryptex_redis_wait_shortfall_total",
    "WAITs that timed out before CRYPTEX_REDIS_WAIT_REPLICAS replicas acknowledged the writes",
    ["service"],
)
ORDER_HANDOVER_FAILURES = Counter(
    "cryptex_order_handover_failures_total",
    "Orders locked by R1 whose hand-over to the market failed (left to the reconciler)",
)

# --- engine ---------------------------------------------------------------------------
ENGINE_COMMANDS = Counter(
    "cryptex_engine_commands_total", "Commands processed", ["market", "type"]
)
ENGINE_BATCH_SIZE = Histogram(
    "cryptex_engine_batch_size",
    "Commands per engine batch",
    ["market"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
ENGINE_MATCH_SECONDS = Histogram(
    "cryptex_engine_match_seconds", "Matching time per batch", ["market"], buckets=_FAST
)
ENGINE_SETTLE_SECONDS = Histogram(
    "cryptex_engine_settle_seconds", "Settle script time per batch", ["market"], buckets=_FAST
)
ENGINE_STREAM_LAG = Gauge(
    "cryptex_engine_stream_lag_entries", "Commands in the stream not yet read", ["market"]
)
ENGINE_STREAM_OLDEST_AGE = Gauge(
    "cryptex_engine_stream_oldest_pending_age_seconds",
    "Age of the oldest command not yet processed (0 when caught up)",
    ["market"],
)
ENGINE_BOOK_LEVELS = Gauge(
    "cryptex_engine_book_levels", "Price levels in the book", ["market", "side"]
)
ENGINE_RESTING_ORDERS = Gauge(
    "cryptex_engine_resting_orders", "Orders resting in the book", ["market"]
)
ENGINE_LAST_SEQ = Gauge("cryptex_engine_last_seq", "Last processed sequence", ["market"])
ENGINE_SNAPSHOT_AGE = Gauge(
    "cryptex_engine_snapshot_age_seconds", "Seconds since the last snapshot", ["market"]
)
ENGINE_FENCED = Counter(
    "cryptex_engine_fenced_total", "Settles refused because another engine owns the market",
    ["market"],
)
TRADES = Counter("cryptex_trades_total", "Trades executed", ["market"])
TRADE_VOLUME_QUOTE = Counter(
    "cryptex_trade_volume_quote_total", "Traded notional in quote asset units", ["market"]
)

# --- WebSocket gateway ------------------------------------------------------------------
WS_CONNECTIONS = Gauge("cryptex_ws_connections", "Open WebSocket connections")
WS_SUBSCRIPTIONS = Gauge(
    "cryptex_ws_subscriptions", "Active subscriptions", ["stream_type"]
)
WS_MESSAGES_SENT = Counter(
    "cryptex_ws_messages_sent_total", "Data messages sent to clients", ["stream_type"]
)
WS_SLOW_CLIENTS_DROPPED = Counter(
    "cryptex_ws_slow_clients_dropped_total", "Clients closed for falling behind"
)
WS_FANOUT_DELAY = Histogram(
    "cryptex_ws_fanout_delay_seconds",
    "Engine publish to gateway send",
    ["stream_type"],
    buckets=_FAST,
)
WS_RESNAPSHOTS = Counter(
    "cryptex_ws_resnapshots_total", "Depth re-snapshots after a sequence gap", ["market"]
)

# --- DB processor -----------------------------------------------------------------------
DBPROC_ROWS = Counter("cryptex_dbproc_rows_written_total", "Rows written", ["table"])
DBPROC_BATCH_SECONDS = Histogram(
    "cryptex_dbproc_batch_seconds", "Time to write one batch", buckets=_FAST
)
DBPROC_LAG = Gauge(
    "cryptex_dbproc_lag_seconds", "Age of the newest event written", ["market"]
)
DBPROC_DEAD_LETTERS = Counter(
    "cryptex_dbproc_dead_letters_total", "Malformed events sent to the dead-letter stream",
    ["market"],
)

# --- dependencies -----------------------------------------------------------------------
REDIS_ERRORS = Counter("cryptex_redis_errors_total", "Redis errors", ["service"])
POSTGRES_ERRORS = Counter("cryptex_postgres_errors_total", "PostgreSQL errors", ["service"])

# --- Redis memory (set by every engine from `INFO memory`, every few seconds) -----------
REDIS_USED_MEMORY = Gauge(
    "cryptex_redis_used_memory_bytes", "Redis used_memory, from INFO memory"
)
REDIS_MAXMEMORY = Gauge(
    "cryptex_redis_maxmemory_bytes", "Redis maxmemory, from INFO memory (0 = no limit)"
)
