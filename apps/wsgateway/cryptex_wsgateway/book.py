"""The gateway's copy of one market's order book, its update sequence, and the checksum.

Pure, no I/O. `DepthTracker` turns the engine's `depth@M` messages into what clients get.

Input: the engine's `DepthDiff` messages and its `DepthBook` key, both declared in
`cryptex_common.market_data` (consecutive diffs satisfy `U == previous u + 1`; a level's
quantity is its absolute total, zero removes it). The book key is written with every batch
that changed a level but read separately from the diffs, so it can lag or lead them.

Invariants:
- while `live`, the book equals the engine's book after update `last_u` (for every price the
  engine has touched since the snapshot; the snapshot itself holds the top 200 per side);
- an update is applied only if `U == last_u + 1`; anything else is a gap (or an engine
  restart): the tracker stops forwarding, buffers, and waits for a snapshot (`live` False);
- every message forwarded continues the previous one: `U == previous u + 1`, where a
  snapshot counts as `u = lastUpdateId`. Batches that did not change the book are not
  forwarded; the next forwarded update covers them (its `U` starts right after the last
  forwarded `u`), which keeps the REST rule `U <= lastUpdateId + 1 <= u` valid;
- `c` on every forwarded message is `checksum(book)` after applying it.

Checksum: CRC32 (zlib, unsigned 32-bit) of the UTF-8 string

    "b:" + ",".join(p + ":" + q for the 10 best bids, best first)
    + "|a:" + ",".join(p + ":" + q for the 10 best asks, best first)

with price and quantity strings exactly as sent on the wire (e.g. `"12000.00:1.500"`); a side
with fewer levels lists what it has (an empty book is `"b:|a:"`).
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

CHECKSUM_DEPTH = 10
SNAPSHOT_LEVELS = 1000
STALE_LIMIT = 50  # this many old updates in a row means the engine restarted its sequence
MAX_BUFFER = 10_000

Level = list[str]  # [price, quantity] decimal strings


def checksum_string(bids: list[Level], asks: list[Level]) -> str:
    """Bids best (highest) first, asks best (lowest) first; only the first 10 of each count."""
    b = ",".join(f"{p}:{q}" for p, q in bids[:CHECKSUM_DEPTH])
    a = ",".join(f"{p}:{q}" for p, q in asks[:CHECKSUM_DEPTH])
    return f"b:{b}|a:{a}"


def checksum(bids: list[Level], asks: list[Level]) -> int:
    return zlib.crc32(checksum_string(bids, asks).encode())


class _Side:
    """Price levels of one side: `prices` sorted ascending, `levels` price -> [p, q]."""

    def __init__(self, descending: bool) -> None:
        self.descending = descending
        self.prices: list[Decimal] = []
        self.levels: dict[Decimal, Level] = {}

    def set(self, price: str, qty: str) -> None:
        key = Decimal(price)
        if Decimal(qty) == 0:
            if self.levels.pop(key, None) is not None:
                del self.prices[bisect.bisect_left(self.prices, key)]
            return
        if key not in self.levels:
            bisect.insort(self.prices, key)
        self.levels[key] = [price, qty]

    def top(self, n: int) -> list[Level]:
        keys = self.prices[-n:][::-1] if self.descending else self.prices[:n]
        return [self.levels[k] for k in keys]


class LocalBook:
    def __init__(self) -> None:
        self.bids = _Side(descending=True)
        self.asks = _Side(descending=False)

    def load(self, bids: list[Level], asks: list[Level]) -> None:
        self.bids, self.asks = _Side(True), _Side(False)
        self.apply(bids, asks)

    def apply(self, bids: list[Level], asks: list[Level]) -> None:
        for p, q in bids:
            self.bids.set(p, q)
        for p, q in asks:
            self.asks.set(p, q)

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        return self.bids.top(n), self.asks.top(n)

    def checksum(self) -> int:
        return checksum(*self.top(CHECKSUM_DEPTH))


class DepthTracker:
    """Sequence and book of one market, from the engine's diffs and `depth:{M}` snapshots."""

    def __init__(self, market: str) -> None:
        self.market = market
        self.book = LocalBook()
        self.live = False
        self.last_u = 0  # last update applied to the book
        self.emitted_u = 0  # last update covered by what subscribers have been sent
        self.buffer: list[dict[str, Any]] = []
        self.gaps = 0
        self._stale_run = 0

    # --- input --------------------------------------------------------------------------
    def on_diff(self, diff: dict[str, Any]) -> list[dict[str, Any]]:
        """Messages to forward (0 or 1). After a gap `live` turns False: fetch a snapshot."""
        if not self.live:
            self._buffer(diff)
            return []
        first, last = int(diff["U"]), int(diff["u"])
        if last <= self.last_u:
            self._stale_run += 1
            if self._stale_run >= STALE_LIMIT:
                self._lose_sync(diff)
            return []
        self._stale_run = 0
        if first != self.last_u + 1:
            self._lose_sync(diff)
            return []
        return self._apply(diff)

    def on_snapshot(
        self, snap: Mapping[str, Any] | None, force: bool = False
    ) -> list[dict[str, Any]] | None:
        """Adopt a stored-book snapshot (None: no book stored yet, an empty book).

        Returns the messages to send (a `depthSnapshot`, then buffered updates), or None when
        the snapshot is older than the buffered updates can continue: ask again a little
        later. With `force`, the caller has waited long enough for the engine to write the
        key, so the batches between the snapshot and the buffer did not change the book
        (the engine writes the key after every batch that does) and the snapshot is adopted
        as of the update just before the first buffered one.
        """
        snap = snap or {"lastUpdateId": 0, "bids": [], "asks": [], "ts": 0}
        base = int(snap["lastUpdateId"])
        pending = [d for d in self.buffer if int(d["u"]) > base]
        if pending and int(pending[0]["U"]) > base + 1:
            if not force:
                return None
            base = int(pending[0]["U"]) - 1
        self.book.load(snap["bids"], snap["asks"])
        self.last_u = self.emitted_u = base
        self.live, self.buffer, self._stale_run = True, [], 0
        out = [self.snapshot_message("resync", int(snap.get("ts") or 0))]
        for i, diff in enumerate(pending):
            if int(diff["u"]) <= self.last_u:  # a duplicate
                continue
            if int(diff["U"]) > self.last_u + 1:  # another gap inside the buffer
                self.live, self.buffer = False, pending[i:]
                self.gaps += 1
                return out
            out.extend(self._apply(diff))
        return out

    def reset(self) -> None:
        """Updates may have been lost (e.g. the pub/sub connection dropped): resync."""
        self.live, self.buffer, self._stale_run = False, [], 0

    # --- output -------------------------------------------------------------------------
    def snapshot_message(self, reason: str, ts: int = 0) -> dict[str, Any]:
        bids, asks = self.book.top(SNAPSHOT_LEVELS)
        return {
            "e": "depthSnapshot",
            "reason": reason,
            "market": self.market,
            # emitted_u, not last_u: updates after emitted_u were empty (never forwarded), so the
            # book is the same, and the next forwarded diff starts at emitted_u + 1
            "lastUpdateId": self.emitted_u,
            "bids": bids,
            "asks": asks,
            "c": self.book.checksum(),
            "ts": ts,
        }

    # --- internals ----------------------------------------------------------------------
    def _apply(self, diff: dict[str, Any]) -> list[dict[str, Any]]:
        self.last_u = int(diff["u"])
        bids, asks = diff.get("bids") or [], diff.get("asks") or []
        if not bids and not asks:
            return []
        self.book.apply(bids, asks)
        first = self.emitted_u + 1
        self.emitted_u = self.last_u
        return [
            {
                "e": "depthUpdate",
                "market": self.market,
                "U": first,
                "u": self.last_u,
                "pu": first - 1,
                "bids": bids,
                "asks": asks,
                "c": self.book.checksum(),
                "ts": diff.get("ts", 0),
            }
        ]

    def _lose_sync(self, diff: dict[str, Any]) -> None:
        self.live, self.buffer, self._stale_run = False, [], 0
        self.gaps += 1
        self._buffer(diff)

    def _buffer(self, diff: dict[str, Any]) -> None:
        if len(self.buffer) >= MAX_BUFFER:  # the snapshot will be newer than all of these
            self.buffer.clear()
        self.buffer.append(diff)
