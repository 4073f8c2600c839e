"""Store a REST depth book the way the settle script stores it (`keys.depth_keys`), for
tests that play the engine's part. `tests/ledger/test_ledger_contract.py` checks that a
book stored by the real settle script reads back the same through `read_depth`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from cryptex_common import keys


def _score(price: str) -> int:
    return int(Decimal(price) * 10**12)  # any order-preserving integer serves as ticks here


async def store_book(redis: Any, symbol: str, last_update_id: int, bids: list[list[str]],
                     asks: list[list[str]], ts_ms: int = 1) -> None:
    """Replace the stored book with these levels ([price, quantity], any order)."""
    header, bid_prices, ask_prices, levels = keys.depth_keys(symbol)
    pipe = redis.pipeline(transaction=True)
    pipe.delete(bid_prices, ask_prices, levels)
    for prices, side in ((bid_prices, bids), (ask_prices, asks)):
        for price, quantity in side:
            score = _score(price)
            pipe.zadd(prices, {str(score): score})
            pipe.hset(levels, str(score), f"{price} {quantity}")
    pipe.set(header, orjson.dumps({"market": symbol, "lastUpdateId": last_update_id, "ts": ts_ms}))
    await pipe.execute()
