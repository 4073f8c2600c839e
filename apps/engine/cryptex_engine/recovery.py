"""Recovery: the state a market continues from, and the command stream after it.

One loop serves both readers of the command log: the engine's start
(`EngineService.recover`: re-match everything after the start, settle only what was never
settled) and `python -m cryptex_engine replay` (rebuild the core and print its state hash).

Invariants:
- State = a start (the stored snapshot, or the empty core with bootstrap rules) + every
  entry after its `last_stream_id`, in stream order (docs/durability.md).
- A start is only used when the stream still holds every entry after it: Cryptex trims
  the stream's head (XTRIM MINID, never past the stored snapshot), so a trimmed stream
  needs the snapshot, and a snapshot that does not verify is never trusted.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common.markets import MarketSpec
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.domain.ticker import RollingTicker
from cryptex_engine.housekeeping import StreamTrimmed, stream_gap_after
from cryptex_engine.snapshots import SnapshotError, decode_snapshot, gc_paused
from cryptex_engine.translate import Translator

log = logging.getLogger("cryptex.engine")

Entries = list[tuple[str, dict[str, str]]]
# What a stored snapshot that must not be trusted raises on the way to a core.
BAD_SNAPSHOT = (SnapshotError, ValueError, KeyError, TypeError)


class SnapshotUse(enum.Enum):
    """When a start comes from the stored snapshot rather than from the empty core."""

    PREFER = "prefer"  # when it verifies (the engine: faster); else the whole stream
    WHEN_TRIMMED = "when_trimmed"  # only when the stream was trimmed (replay: checks it all)
    ALWAYS = "always"
    NEVER = "never"


@dataclass
class Start:
    """A core and the stream position it stands at, with the engine's adapters' state."""

    core: MatchingEngine
    translator: Translator
    ticker: RollingTicker
    last_stream_id: str = "0-0"
    from_snapshot: bool = False

    @property
    def source(self) -> str:
        return f"snapshot@{self.core.seq}" if self.from_snapshot else "stream"


def empty_start(spec: MarketSpec) -> Start:
    """The state before a stream's first command: a halted core with bootstrap rules."""
    return Start(MatchingEngine.empty(spec.rules(), keys.FEE_ACCOUNT), Translator(spec), RollingTicker())


async def stored_start(redis: Redis, spec: MarketSpec) -> Start | None:
    """The stored snapshot as a start, None when there is none; raises one of BAD_SNAPSHOT
    when it does not verify."""
    raw = await redis.get(keys.snapshot_key(spec.symbol))
    if not raw:
        return None
    with gc_paused():
        state: dict[str, Any] = decode_snapshot(raw)
        core = MatchingEngine.restore(spec.rules(), state["core"], keys.FEE_ACCOUNT)
        translator = Translator(spec)
        translator.restore(state["meta"])
        ticker = RollingTicker.restore(state["ticker"])
    return Start(core, translator, ticker, str(state["lastStreamId"]), from_snapshot=True)


async def find_start(redis: Redis, spec: MarketSpec, use: SnapshotUse) -> Start:
    """The start `use` asks for, checked against the stream; StreamTrimmed when the stream
    lost entries it needs (a trimmed stream and no valid snapshot, or NEVER on a trimmed
    stream)."""
    stream = keys.commands_stream(spec.symbol)
    trimmed = await stream_gap_after(redis, stream, "0-0")
    start: Start | None = None
    if use is SnapshotUse.ALWAYS or use is SnapshotUse.PREFER or (trimmed and use is SnapshotUse.WHEN_TRIMMED):
        try:
            start = await stored_start(redis, spec)
        except BAD_SNAPSHOT as exc:
            if use is not SnapshotUse.PREFER:
                raise
            # a bad snapshot is skipped, not trusted: the whole stream still rebuilds the
            # state unless it was trimmed (refused just below)
            log.error("snapshot rejected; replaying the whole stream",
                      extra={"market": spec.symbol, "error": str(exc)})
        if start is None and (use is SnapshotUse.ALWAYS or trimmed):
            raise StreamTrimmed(f"{trimmed or stream}; and there is no valid snapshot "
                                "(see docs/durability.md)")
    start = start or empty_start(spec)
    gap = await stream_gap_after(redis, stream, start.last_stream_id)
    if gap:
        raise StreamTrimmed(f"{gap}: a valid snapshot is needed to rebuild this market "
                            "(see docs/durability.md)")
    return start


async def batches(redis: Redis, stream: str, after_id: str, count: int,
                  stop: asyncio.Event | None = None) -> AsyncIterator[Entries]:
    """The stream's entries after `after_id`, `count` at a time, up to its current end;
    a set `stop` ends it at a batch boundary."""
    last = after_id
    while True:
        entries = await redis.xrange(stream, min=f"({last}", count=count)
        if not entries or (stop is not None and stop.is_set()):
            return
        yield entries
        last = entries[-1][0]
