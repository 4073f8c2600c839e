"""The engine's metrics, counted once per batch (a labels() lookup per command costs more
than matching): every labelled child is looked up once, here."""

from __future__ import annotations

import logging
from typing import Any

from cryptex_common import metrics
from cryptex_engine.decode import Decoded
from cryptex_engine.domain.commands import CommandResult

log = logging.getLogger("cryptex.engine")

COMMAND_TYPES = ("place", "cancel", "cancel_all", "configure", "unsupported")


class EngineMetrics:
    """Zero series for every label value this engine owns exist from the start, so rules
    and dashboards see them before the first event (e.g. `rate(cryptex_engine_commands_total)`
    for CryptexEngineNotConsuming, the fenced counter before any fencing)."""

    def __init__(self, symbol: str, quote_decimals: int) -> None:
        m = {"market": symbol}
        self.commands = {kind: metrics.ENGINE_COMMANDS.labels(market=symbol, type=kind)
                         for kind in COMMAND_TYPES}
        self.levels_buy = metrics.ENGINE_BOOK_LEVELS.labels(market=symbol, side="buy")
        self.levels_sell = metrics.ENGINE_BOOK_LEVELS.labels(market=symbol, side="sell")
        self.batch_size = metrics.ENGINE_BATCH_SIZE.labels(**m)
        self.match_seconds = metrics.ENGINE_MATCH_SECONDS.labels(**m)
        self.settle_seconds = metrics.ENGINE_SETTLE_SECONDS.labels(**m)
        self.stream_lag = metrics.ENGINE_STREAM_LAG.labels(**m)
        self.oldest_age = metrics.ENGINE_STREAM_OLDEST_AGE.labels(**m)
        self.resting = metrics.ENGINE_RESTING_ORDERS.labels(**m)
        self.last_seq = metrics.ENGINE_LAST_SEQ.labels(**m)
        self.snapshot_age = metrics.ENGINE_SNAPSHOT_AGE.labels(**m)
        self.fenced = metrics.ENGINE_FENCED.labels(**m)
        self.trades = metrics.TRADES.labels(**m)
        self.volume = metrics.TRADE_VOLUME_QUOTE.labels(**m)
        self.redis_errors = metrics.REDIS_ERRORS.labels(service="engine")
        self._quote_scale = 10**quote_decimals

    def batch(self, decoded: list[Decoded], results: list[CommandResult], core: Any) -> None:
        """One batch's counts: commands per type, trades, volume, and the book gauges."""
        kinds: dict[str, int] = {}
        trades = quote_units = 0
        for d in decoded:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        for r in results:
            if r.fills:
                trades += len(r.fills)
                quote_units += sum(f.quote_units for f in r.fills)
        for kind, n in kinds.items():
            child = self.commands.get(kind)
            if child is None:
                child = self.commands[kind] = metrics.ENGINE_COMMANDS.labels(
                    market=core.rules.symbol, type=kind)
            child.inc(n)
        if trades:
            self.trades.inc(trades)
            self.volume.inc(quote_units / self._quote_scale)
        self.last_seq.set(core.seq)
        self.resting.set(core.open_orders_count())
        n_bids, n_asks = core.level_counts()
        self.levels_buy.set(n_bids)
        self.levels_sell.set(n_asks)


def log_commands(decoded: list[Decoded], results: list[CommandResult], first_seq: int) -> None:
    """Rejected commands and cancels at INFO, every other command at DEBUG (only when
    enabled): orderId + correlationId follow an order from the API's "order queued".
    Commands settled before a restart (seq < first_seq) are not logged again."""
    debug = log.isEnabledFor(logging.DEBUG)
    for d, r in zip(decoded, results, strict=True):
        kind = d.kind
        if r.seq < first_seq or (r.accepted and kind == "place" and not debug):
            continue
        extra: dict[str, Any] = {
            "seq": r.seq, "type": kind,
            "orderId": d.order_id if d.order_id is not None else getattr(d.command, "order_id", None),
            "correlationId": d.correlation_id,
        }
        if not r.accepted:
            log.info("command rejected", extra={**extra, "reason": r.reject_reason})
        elif kind == "cancel":
            log.info("order cancelled", extra=extra)
        elif kind == "cancel_all":
            log.info("orders cancelled", extra={**extra, "cancelled": len(r.updates)})
        elif debug:
            log.debug("command applied", extra={
                **extra, "status": r.order.status.value if r.order else None,
                "fills": len(r.fills)})

