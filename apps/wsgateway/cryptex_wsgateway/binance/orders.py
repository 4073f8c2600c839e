"""One user's native order and fill updates turned into Binance `executionReport` events,
and balances into `outboundAccountPosition`. Pure, no I/O.

The engine publishes, per settled batch and user, each touched order's state after the
batch (`user.orders`), then one message per fill (`user.fills`). Binance reports events
instead: `NEW`, one `TRADE` per fill with the cumulative filled quantity `z`, then
`CANCELED` or `EXPIRED` for a remainder. `ExecutionReports` keeps, per open order, what it
has reported so far, and derives the events in Binance's order.

Invariants:
- an order first seen by this feed that is new and unfilled, or was created after the feed
  started (less CLOCK_SLACK_MS, the API's clock may trail the gateway's), gets a `NEW` report
  first (with `z` zero); an order the engine rejected on arrival (post-only would take) gets
  no report, as on Binance, where the REST call fails with -2010;
- each fill gives exactly one `TRADE` report; its `z`/`Z` are the sums of the order's fills
  reported so far, its `X` is `FILLED` only for the fill that completes a filled order;
- a cancelled or expired order gets its `CANCELED`/`EXPIRED` report after the `TRADE`
  report of its last fill (an IOC remainder: `NEW`, `TRADE`..., `EXPIRED`);
- an order leaves the table once reported terminal, so the table holds open orders only
  (at most MAX_TRACKED; the oldest are forgotten first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cryptex_common.binance import binance_symbol
from cryptex_wsgateway.binance.payloads import Payload

MAX_TRACKED = 10_000
CLOCK_SLACK_MS = 1_000
STATUS = {"new": "NEW", "partially_filled": "PARTIALLY_FILLED", "filled": "FILLED",
          "cancelled": "CANCELED", "expired": "EXPIRED", "rejected": "REJECTED"}
ENDS = {"cancelled": "CANCELED", "expired": "EXPIRED"}


@dataclass(slots=True)
class _Track:
    order: Payload
    z: Decimal | None  # cumulative quantity reported (None: unknown, order older than the feed)
    zq: Decimal | None  # cumulative quote quantity reported


def order_type(o: Payload) -> str:
    if o["type"] == "market":
        return "MARKET"
    return "LIMIT_MAKER" if o.get("postOnly") else "LIMIT"


def _text(d: Decimal) -> str:
    return f"{d:f}"


class ExecutionReports:
    """`zeros(market)` gives a market's ("0.000" quantity, "0.000000" quote) texts;
    `since_ms` is when the feed started (older orders get no NEW report)."""

    def __init__(self, zeros: Callable[[str], tuple[str, str]], since_ms: int) -> None:
        self.zeros = zeros
        self.since_ms = since_ms
        self.orders: dict[str, _Track] = {}

    def on_order(self, o: Payload, now: int) -> list[Payload]:
        oid = o["orderId"]
        track = self.orders.get(oid)
        out: list[Payload] = []
        if track is None:
            if o["status"] == "rejected":
                return out
            fresh = (o["status"] == "new" and Decimal(o["executedQty"]) == 0) or \
                int(o.get("createdAt") or 0) >= self.since_ms - CLOCK_SLACK_MS
            zq, zqq = self.zeros(o["market"])
            track = _Track(o, Decimal(zq) if fresh else None, Decimal(zqq) if fresh else None)
            self._remember(oid, track)
            if fresh:
                out.append(self._report(track, "NEW", "NEW", None, now))
        track.order = o
        out.extend(self._settle(oid, track, now))
        return out

    def on_fill(self, f: Payload, now: int) -> list[Payload]:
        track = self.orders.get(f["orderId"])
        if track is None:  # an order this feed never saw (should not happen: orders come first)
            return []
        o = track.order
        qty, quote = Decimal(f["quantity"]), Decimal(f["quoteQuantity"])
        if track.z is None or track.zq is None:  # older than the feed: this fill ends the batch
            track.z = Decimal(o["executedQty"]) - qty
            track.zq = Decimal(o["executedQuoteQty"]) - quote
        track.z += qty
        track.zq += quote
        done = track.z >= Decimal(o["executedQty"])
        status = "FILLED" if done and o["status"] == "filled" else "PARTIALLY_FILLED"
        out = [self._report(track, "TRADE", status, f, now)]
        if done:
            out.extend(self._settle(f["orderId"], track, now))
        return out

    def _settle(self, oid: str, track: _Track, now: int) -> list[Payload]:
        """The order's end, once every fill of it has been reported."""
        o = track.order
        executed = Decimal(o["executedQty"])
        if track.z is None:
            if o["status"] not in ENDS:
                if o["status"] == "new":
                    track.z, track.zq = executed, Decimal(o["executedQuoteQty"])
                return []  # partially filled or filled: its fills follow
            track.z, track.zq = executed, Decimal(o["executedQuoteQty"])
        if track.z < executed:
            return []  # fills still to come
        if o["status"] in ENDS:
            del self.orders[oid]
            return [self._report(track, ENDS[o["status"]], ENDS[o["status"]], None, now)]
        if o["status"] == "filled":
            del self.orders[oid]
        return []

    def _remember(self, oid: str, track: _Track) -> None:
        if len(self.orders) >= MAX_TRACKED:
            del self.orders[next(iter(self.orders))]
        self.orders[oid] = track

    def _report(self, track: _Track, execution: str, status: str, fill: Payload | None,
                now: int) -> Payload:
        o = track.order
        zero_qty, zero_quote = self.zeros(o["market"])
        limit = o["type"] == "limit"
        price = o.get("price") or "0"
        return {
            "e": "executionReport", "E": now, "s": binance_symbol(o["market"]),
            "c": o.get("clientOrderId") or "", "S": o["side"].upper(), "o": order_type(o),
            "f": o["timeInForce"] if limit and not o.get("postOnly") else "GTC",
            "q": o.get("quantity") or zero_qty, "p": price, "P": "0", "F": zero_qty,
            "g": -1, "C": "", "x": execution, "X": status, "r": "NONE", "i": int(o["orderId"]),
            "l": fill["quantity"] if fill else zero_qty, "z": _text(track.z or Decimal(zero_qty)),
            "L": fill["price"] if fill else "0", "n": fill["fee"] if fill else "0",
            "N": fill["feeAsset"] if fill else None,
            "T": int(fill["ts"]) if fill else int(o.get("updatedAt") or now),
            "t": int(fill["tradeId"]) if fill else -1, "I": 0,
            "w": limit and status in ("NEW", "PARTIALLY_FILLED"),
            "m": bool(fill) and fill is not None and fill["liquidity"] == "maker", "M": False,
            "O": int(o.get("createdAt") or now), "Z": _text(track.zq or Decimal(zero_quote)),
            "Y": fill["quoteQuantity"] if fill else zero_quote,
            "Q": o.get("quoteQuantity") or zero_quote, "W": int(o.get("createdAt") or now),
            "V": "NONE",
        }


def account_position(balances: list[dict[str, Any]], now: int) -> Payload:
    """Absolute balances of the assets that changed: `{"asset","available","locked"}` each."""
    return {"e": "outboundAccountPosition", "E": now, "u": now,
            "B": [{"a": b["asset"], "f": b["available"], "l": b["locked"]} for b in balances]}
