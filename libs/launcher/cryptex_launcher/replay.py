"""`cryptex replay --market M`: rebuild a market from its command stream alone (no
snapshot, no settled state) and print the core's state hash. The running engine reports
the same hash for the same sequence at its ops endpoint /state."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from cryptex_common import keys, registry
from cryptex_common.markets import normalize_symbol
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.translate import decode_entry


async def replay_market(redis_url: str, market: str, upto_seq: int | None = None) -> dict[str, Any]:
    symbol = normalize_symbol(market)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        spec = await registry.get_market(redis, symbol)
        if spec is None:
            raise SystemExit(f"unknown market {symbol}")
        core = MatchingEngine(spec.rules())
        last_id, commands = "0-0", 0
        while upto_seq is None or core.seq < upto_seq:
            entries = await redis.xrange(keys.commands_stream(symbol), min=f"({last_id}", count=1000)
            if not entries:
                break
            for stream_id, fields in entries:
                last_id = stream_id
                if upto_seq is not None and core.seq >= upto_seq:
                    break
                try:
                    decoded = decode_entry(stream_id, fields)
                except Exception:
                    continue  # the engine skips undecodable entries the same way
                core.apply(decoded.command, decoded.ts_ms)
                commands += 1
        return {"market": symbol, "seq": core.seq, "commands": commands,
                "stateHash": core.state_hash(), "lastStreamId": last_id}
    finally:
        await redis.aclose()
