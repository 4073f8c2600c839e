"""The operator's Redis side: the market registry, and what tells that an engine drained.

State and fee changes go through `registry.register_market`, which queues a `configure`
command on the market's stream, so the engine applies them in sequence with the orders.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from cryptex_common import keys, registry
from cryptex_common.markets import MarketSpec, MarketState


async def register(redis: Redis, spec: MarketSpec) -> bool:
    """Create or update the market; raises registry.ImmutableFieldChanged."""
    return await registry.register_market(redis, spec)


async def set_state(redis: Redis, symbol: str, state: MarketState) -> bool:
    """Move a registered market to `state` (no-op when unregistered or already there)."""
    current = await registry.get_market(redis, symbol)
    if current is None or current.state == state:
        return False
    return await registry.register_market(redis, current.model_copy(update={"state": state}))


async def begin_drain(redis: Redis, symbol: str) -> bool:
    """cancelOnly, unless the market is already closed: a retried delete never reopens it."""
    current = await registry.get_market(redis, symbol)
    if current is None or current.state == MarketState.CLOSED:
        return False
    return await set_state(redis, symbol, MarketState.CANCEL_ONLY)


async def last_sequence(redis: Redis, symbol: str) -> int | None:
    raw = await redis.get(keys.settled_seq_key(symbol))
    return int(raw) if raw is not None else None


@dataclass(frozen=True)
class Drain:
    bid_levels: int
    ask_levels: int
    commands_pending: int  # queued for the engine's group and not yet acknowledged

    @property
    def book_empty(self) -> bool:
        return self.bid_levels == 0 and self.ask_levels == 0

    def describe(self) -> str:
        return (f"{self.bid_levels} bid and {self.ask_levels} ask levels resting, "
                f"{self.commands_pending} commands not yet processed")


async def commands_pending(redis: Redis, symbol: str) -> int:
    """Entries the engine's consumer group has not read (lag) or not acknowledged.

    No stream or no group: no engine ever ran, nothing is waiting for one.
    """
    stream = keys.commands_stream(symbol)
    if not await redis.exists(stream):
        return 0
    for group in await redis.xinfo_groups(stream):
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) != keys.ENGINE_GROUP:
            continue
        lag = group.get("lag")
        if lag is None:  # Redis could not compute it: count what is after last-delivered-id
            last = group["last-delivered-id"]
            lag = len(await redis.xrange(stream, min=f"({_s(last)}", max="+"))
        return int(lag) + int(group["pending"])
    return 0


async def drain_state(redis: Redis, symbol: str) -> Drain:
    raw = await redis.get(keys.depth_key(symbol))
    book = orjson.loads(raw) if raw else {}
    return Drain(
        bid_levels=len(book.get("bids") or []),
        ask_levels=len(book.get("asks") or []),
        commands_pending=await commands_pending(redis, symbol),
    )


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
