"""DepthBatch (binance/batching.py): merging consecutive native updates gives one update
that covers them all and equals applying them one by one. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from cryptex_wsgateway.binance.batching import DepthBatch

pytestmark = pytest.mark.slow


def native(first: int, last: int, bids: list[list[str]], asks: list[list[str]]) -> dict[str, Any]:
    return {"e": "depthUpdate", "market": "SOL/USDC", "U": first, "u": last, "pu": first - 1,
            "bids": bids, "asks": asks, "ts": 1000 + last}


def test_merged_update_covers_the_range_with_each_level_last_quantity() -> None:
    batch = DepthBatch(native(11, 12, [["10.00", "1.000"]], [["11.00", "2.000"]]))
    later = native(13, 15, [["10.00", "0.000"], ["9.99", "3.000"]], [])
    assert batch.continues(later) and not batch.continues(native(17, 17, [], []))
    batch.add(later)
    assert batch.payload("SOLUSDC", 0) == {
        "e": "depthUpdate", "E": 1015, "s": "SOLUSDC", "U": 11, "u": 15, "pu": 10,
        "b": [["10.00", "0.00000000"], ["9.99", "3.000"]], "a": [["11.00", "2.000"]]}
