"""Diff-depth updates merged over a stream's update speed (Binance: `@depth` every 1000 ms,
`@depth@100ms` every 100 ms). Pure, no I/O.

Invariants:
- a batch only ever holds consecutive native updates (`U == previous u + 1`), so the merged
  update covers exactly `U..u` and continues the previous one (`pu`); whoever feeds it
  flushes before anything that is not consecutive (a resync);
- for each price the merged update carries the quantity after the last update that
  touched it (levels are absolute), so applying it equals applying the updates one by one.
"""

from __future__ import annotations

from typing import Any

from cryptex_wsgateway.binance.payloads import Payload, binance_levels


class DepthBatch:
    def __init__(self, update: dict[str, Any]) -> None:
        self.first = int(update["U"])
        self.pu = int(update["pu"])
        self.last = self.first - 1
        self.ts = 0
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.add(update)

    def continues(self, update: dict[str, Any]) -> bool:
        return int(update["U"]) == self.last + 1

    def add(self, update: dict[str, Any]) -> None:
        """Merge a native `depthUpdate` that `continues` this batch."""
        self.last = int(update["u"])
        self.ts = int(update.get("ts") or self.ts)
        self.bids.update((p, q) for p, q in update["bids"])
        self.asks.update((p, q) for p, q in update["asks"])

    def payload(self, symbol: str, now: int) -> Payload:
        return {"e": "depthUpdate", "E": self.ts or now, "s": symbol, "U": self.first, "u": self.last,
                "pu": self.pu, "b": binance_levels([[p, q] for p, q in self.bids.items()]),
                "a": binance_levels([[p, q] for p, q in self.asks.items()])}
