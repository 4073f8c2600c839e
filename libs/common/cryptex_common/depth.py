"""Reading the REST depth book the settle script keeps (`keys.depth_keys`): one consistent
read of the best `limit` levels per side, by every service that shows or checks a book."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from redis.exceptions import NoScriptError

from cryptex_common import keys
from cryptex_common.ledger import lua_source
from cryptex_common.market_data import DepthBook, Level, depth_book

MAX_DEPTH_LIMIT = 5000
_SOURCE = lua_source("depth_read.lua")
_SHA = hashlib.sha1(_SOURCE.encode()).hexdigest()


def _levels(raw: list[Any]) -> list[Level]:
    out = []
    for level in raw:
        if level is None:  # a price without its level: the book was read mid-change (never)
            continue
        price, _, quantity = (level.decode() if isinstance(level, bytes) else level).partition(" ")
        out.append([price, quantity])
    return out


async def read_depth(redis: Any, symbol: str, limit: int) -> DepthBook | None:
    """The best `limit` (1..5000) levels per side as of the header's batch, or None when
    the market's engine has written no book yet. `redis` is a redis-py asyncio client."""
    if not 1 <= limit <= MAX_DEPTH_LIMIT:
        raise ValueError(f"limit must be within 1..{MAX_DEPTH_LIMIT}")
    book_keys = keys.depth_keys(symbol)
    try:
        header, bids, asks = await redis.evalsha(_SHA, len(book_keys), *book_keys, limit)
    except NoScriptError:
        header, bids, asks = await redis.eval(_SOURCE, len(book_keys), *book_keys, limit)
    if header is None:
        return None
    return depth_book(orjson.loads(header), _levels(bids), _levels(asks))


async def level_counts(redis: Any, symbol: str) -> tuple[int, int]:
    """How many bid and ask levels the stored book holds."""
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(keys.depth_bids_key(symbol))
    pipe.zcard(keys.depth_asks_key(symbol))
    bids, asks = await pipe.execute()
    return int(bids), int(asks)
