"""`cryptex replay --market M [--upto-seq N]`: rebuild a market from its command stream alone
(no settled state, no ledger) and print the core's state hash. The running engine reports
the same hash for the same sequence at its ops endpoint /state.

From an empty state replay needs the whole stream. Once the engine has trimmed the stream
(XTRIM MINID, never past its stored snapshot), replay starts from that snapshot instead
(verified by its checksum) and says so; a sequence older than the snapshot cannot be rebuilt
any more (see docs/durability.md).

It judges exactly as the engine does: from an empty state with the bootstrap rules, then
by the rules each configure on the stream puts in force (never the registry's current
rules: the registry only names the market's assets and grid), and an undecodable entry is
rejected in sequence or skipped by the engine's own rule (`translate.read_entry`).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from cryptex_common import keys, registry
from cryptex_common.markets import normalize_symbol
from cryptex_engine.decode import read_entry
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.housekeeping import stream_gap_after
from cryptex_engine.snapshots import decode_snapshot, gc_paused


class ReplayError(SystemExit):
    pass


async def replay_market(redis_url: str, market: str, upto_seq: int | None = None,
                        use_snapshot: bool | None = None) -> dict[str, Any]:
    """use_snapshot: None = only when the stream was trimmed; True = always start from the
    snapshot (faster); False = never (fails on a trimmed stream)."""
    symbol = normalize_symbol(market)
    stream = keys.commands_stream(symbol)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        spec = await registry.get_market(redis, symbol)
        if spec is None:
            raise ReplayError(f"unknown market {symbol}")
        core = MatchingEngine.empty(spec.rules())
        last_id, commands, source = "0-0", 0, "stream"
        trimmed = await stream_gap_after(redis, stream, "0-0")
        if use_snapshot or (use_snapshot is None and trimmed):
            raw = await redis.get(keys.snapshot_key(symbol))
            if not raw:
                raise ReplayError(f"{trimmed or stream}; and there is no snapshot")
            with gc_paused():
                state = decode_snapshot(raw)
                core = MatchingEngine.restore(spec.rules(), state["core"])
            last_id, source = state["lastStreamId"], f"snapshot@{core.seq}"
            if upto_seq is not None and upto_seq < core.seq:
                raise ReplayError(f"seq {upto_seq} is older than the snapshot (seq {core.seq}) and "
                                  f"{stream} was trimmed: it cannot be rebuilt any more")
        gap = await stream_gap_after(redis, stream, last_id)
        if gap:
            raise ReplayError(f"{gap}: cannot replay")
        while upto_seq is None or core.seq < upto_seq:
            entries = await redis.xrange(stream, min=f"({last_id}", count=1000)
            if not entries:
                break
            for stream_id, fields in entries:
                if upto_seq is not None and core.seq >= upto_seq:
                    break
                last_id = stream_id
                decoded, _ = read_entry(stream_id, fields, spec)
                if decoded is None:
                    continue  # undecodable, no lock envelope: the engine skips it too
                core.apply(decoded.command, decoded.ts_ms)
                commands += 1
        if upto_seq is not None and core.seq < upto_seq:
            raise ReplayError(f"the stream holds only {core.seq} commands, not {upto_seq}")
        with gc_paused():
            state_hash = core.state_hash()
        return {"market": symbol, "seq": core.seq, "commands": commands, "source": source,
                "stateHash": state_hash, "lastStreamId": last_id}
    finally:
        await redis.aclose()
