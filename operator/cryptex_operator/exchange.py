"""The operator's Redis side: the market registry, and what tells that an engine drained.

State and fee changes go through `registry.register_market`, which queues a `configure`
command on the market's stream, so the engine applies them in sequence with the orders.

Invariant of the delete drain (`drain_step`): a market is reported drained only when it is
closed, its book is empty and the engine has settled every command ever queued on its
stream, all checked after `closed` itself was settled; so no order rests with funds locked
in a removed market, and the drain never puts a market in a state that accepts orders.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.asyncio import Redis

from cryptex_common import keys, registry
from cryptex_common.depth import level_counts
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


async def last_sequence(redis: Redis, symbol: str) -> int | None:
    raw = await redis.get(keys.settled_seq_key(symbol))
    return int(raw) if raw is not None else None


@dataclass(frozen=True)
class Drain:
    """What the delete drain sees of a market at one instant."""

    state: MarketState | None  # in the registry; None: not registered
    bid_levels: int
    ask_levels: int
    commands_pending: int  # on the command stream and not yet settled by the engine

    @property
    def book_empty(self) -> bool:
        return self.bid_levels == 0 and self.ask_levels == 0

    @property
    def done(self) -> bool:
        """Closed (or never registered), nothing resting, nothing left for the engine."""
        closed = self.state in (MarketState.CLOSED, None)
        return closed and self.book_empty and self.commands_pending == 0

    def describe(self) -> str:
        state = self.state.value if self.state is not None else "unregistered"
        return (f"{state}: {self.bid_levels} bid and {self.ask_levels} ask levels resting, "
                f"{self.commands_pending} commands not yet processed")


async def commands_pending(redis: Redis, symbol: str) -> int:
    """Entries of the market's command stream the engine has not settled yet.

    Every entry ever added (XINFO STREAM entries-added: trimming does not lower it) either
    took a sequence number, and is settled once `settled_seq_key` reaches it, or was skipped
    as undecodable without a lock envelope, which the engine records in the dead-letter
    stream with `rejected` = "0" (docs/decisions/0011). So
        pending = entries-added - settled - skipped.
    The three are read in one MULTI, at one instant. It depends neither on the consumer
    group nor on how the engine reads; no stream: nothing was ever queued.
    """
    pipe = redis.pipeline(transaction=True)
    pipe.xinfo_stream(keys.commands_stream(symbol))
    pipe.get(keys.settled_seq_key(symbol))
    pipe.xrange(keys.dead_letter_stream(symbol))
    info, settled, dead = await pipe.execute(raise_on_error=False)
    if isinstance(info, Exception):  # no such stream
        return 0
    if isinstance(settled, Exception) or isinstance(dead, Exception):
        raise settled if isinstance(settled, Exception) else dead
    skipped = {_field(f, "id") for _, f in dead if _field(f, "rejected") != "1"}
    added = int(info.get("entries-added") or 0)
    return max(0, added - int(settled or 0) - len(skipped))


async def drain_state(redis: Redis, symbol: str) -> Drain:
    """The registry state, the stored book's level count per side and the pending commands.
    The pending count is read first: when it is 0, every batch before was settled and its
    book written (the settle script writes it before the engine reads the next batch)."""
    pending = await commands_pending(redis, symbol)
    bid_levels, ask_levels = await level_counts(redis, symbol)
    spec = await registry.get_market(redis, symbol)
    return Drain(
        state=spec.state if spec is not None else None,
        bid_levels=bid_levels,
        ask_levels=ask_levels,
        commands_pending=pending,
    )


async def wait_processed(redis: Redis, symbol: str, wait_s: float) -> Drain:
    """Poll until the engine has processed every command, at most `wait_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        state = await drain_state(redis, symbol)
        if state.commands_pending == 0 or loop.time() >= deadline:
            return state
        await asyncio.sleep(0.05)


async def drain_step(redis: Redis, symbol: str, wait_s: float) -> Drain:
    """Move a market being deleted towards `closed`; returns what it saw last (`done` when
    the market may be removed). The rule, each step only once the engine processed every
    command before it:
    1. any state but cancelOnly/closed -> cancelOnly: from its sequence on, no order can rest;
    2. orders rest: wait for their owners to cancel; if the market is closed, back to
       cancelOnly first, since a closed market refuses cancels and the funds would stay locked;
    3. book empty and not closed -> closed, then check again once the engine applied it;
    4. closed, book empty, nothing pending: done.
    Idempotent: a retry re-reads everything and never opens the market to new orders."""
    current = await registry.get_market(redis, symbol)
    if current is None:
        return Drain(None, 0, 0, 0)
    if current.state not in (MarketState.CANCEL_ONLY, MarketState.CLOSED):
        await set_state(redis, symbol, MarketState.CANCEL_ONLY)
    state = await wait_processed(redis, symbol, wait_s)
    for _ in range(2):
        if state.commands_pending:
            return state
        if not state.book_empty:
            if state.state == MarketState.CLOSED:
                await set_state(redis, symbol, MarketState.CANCEL_ONLY)
            return state
        if state.state != MarketState.CLOSED:
            await set_state(redis, symbol, MarketState.CLOSED)
            state = await wait_processed(redis, symbol, wait_s)
    return state


def _field(fields: dict[bytes | str, bytes | str], name: str) -> str:
    """A stream entry's field, whether the client decodes responses or not ("" if absent)."""
    value = fields.get(name.encode(), fields.get(name, ""))
    return value.decode() if isinstance(value, bytes) else value
