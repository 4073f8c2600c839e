"""Live candles (klines) built from the engine's public trades. Pure, no I/O.

The candle maths is dbproc's (`cryptex_common.candles`, integers: ticks, lots, quote units)
and so are the buckets (`cryptex_common.intervals`: UTC, weeks from Monday), so a live
candle equals the candle table's row for the same trades: open and close are the prices of
the lowest and highest trade id, whatever order the trades arrive in.

Invariants:
- a candle is reported `closed` exactly once: when a trade of a later bucket arrives or when
  `tick(now)` passes its close time; after that it never changes (a late trade for a closed
  bucket is ignored: the DB processor's candles are the historical record);
- a bucket without trades produces no candle;
- amounts on the wire are `WireFormat`'s strings of the market.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cryptex_common.candles import Candle, TradeTick, candle_of_trade
from cryptex_common.errors import ErrorCode
from cryptex_common.intervals import bucket_start_ms, close_time_ms
from cryptex_common.money import to_steps
from cryptex_common.wire import WireFormat


def parse_trades(trades: list[dict[str, Any]], fmt: WireFormat) -> list[TradeTick]:
    """The engine's public trades (`market_data.PublicTrade`) back in integers; once per
    upstream message, shared by every interval's builder."""
    quote_unit = Decimal(1).scaleb(-fmt.spec.quote_decimals)
    return [
        TradeTick(int(t["tradeId"]), int(t["ts"]),
                  to_steps(Decimal(t["price"]), fmt.tick, "price", ErrorCode.OFF_TICK),
                  to_steps(Decimal(t["quantity"]), fmt.lot, "quantity", ErrorCode.OFF_LOT),
                  to_steps(Decimal(t["quoteQuantity"]), quote_unit, "quoteQuantity", ErrorCode.INVALID_FIELD))
        for t in trades
    ]


def kline_message(candle: Candle, fmt: WireFormat, closed: bool) -> dict[str, Any]:
    return {
        "e": "kline",
        "market": candle.market,
        "interval": candle.interval,
        "openTime": candle.open_time_ms,
        "closeTime": close_time_ms(candle.open_time_ms, candle.interval),
        "open": fmt.price_text(candle.open_ticks),
        "high": fmt.price_text(candle.high_ticks),
        "low": fmt.price_text(candle.low_ticks),
        "close": fmt.price_text(candle.close_ticks),
        "volume": fmt.quantity_text(candle.volume_lots),
        "quoteVolume": fmt.quote_text(candle.quote_volume_units),
        "count": candle.trade_count,
        "closed": closed,
    }


class KlineBuilder:
    """The open candle of one market and interval."""

    def __init__(self, fmt: WireFormat, interval: str) -> None:
        self.fmt = fmt
        self.market = fmt.spec.symbol
        self.interval = interval
        self.current: Candle | None = None

    def message(self, closed: bool = False) -> dict[str, Any] | None:
        """The open candle's message (None before its first trade)."""
        return None if self.current is None else kline_message(self.current, self.fmt, closed)

    def add_trades(self, trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fold one batch of trades in; returns the closed candle (if a bucket ended) and the
        open candle's update, in that order."""
        return self.fold(parse_trades(trades, self.fmt), report=True)

    def fold(self, trades: list[TradeTick], report: bool) -> list[dict[str, Any]]:
        """`add_trades` on parsed trades; with `report` False (nobody subscribes to this
        interval) the candle is updated the same but no message is built."""
        out: list[dict[str, Any]] = []
        changed = False
        for t in trades:
            bucket = bucket_start_ms(t.ts_ms, self.interval)
            c = self.current
            if c is not None and bucket < c.open_time_ms:
                continue  # late trade for a closed bucket
            if c is not None and bucket > c.open_time_ms:
                if report:
                    out.append(kline_message(c, self.fmt, closed=True))
                c = self.current = None
                changed = False
            if c is None:
                self.current = candle_of_trade(self.market, self.interval, t)
            else:
                c.add_trade(t)
            changed = True
        if changed and report and self.current is not None:
            out.append(kline_message(self.current, self.fmt, closed=False))
        return out

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        """Close the open candle once its bucket has ended."""
        c = self.current
        if c is None or now_ms <= close_time_ms(c.open_time_ms, c.interval):
            return []
        self.current = None
        return [kline_message(c, self.fmt, closed=True)]
