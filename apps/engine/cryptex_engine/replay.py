"""`python -m cryptex_engine replay --market M [--upto-seq N] [--from-snapshot]`: rebuild a
market from its command stream alone (no settled state, no ledger) and print the core's
state hash. The running engine reports the same hash for the same sequence at its ops
endpoint /state; `./cryptex replay` runs this.

From an empty state replay needs the whole stream. Once the engine has trimmed the stream
(XTRIM MINID, never past its stored snapshot), replay starts from that snapshot instead
(verified by its checksum) and says so; a sequence older than the snapshot cannot be rebuilt
any more (see docs/durability.md).

It judges exactly as the engine does, through the engine's own recovery (recovery.py): from
an empty state with the bootstrap rules, then by the rules each configure on the stream puts
in force (never the registry's current rules: the registry only names the market's assets
and grid), and an undecodable entry is rejected in sequence or skipped by the engine's own
rule (`decode.read_entry`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from cryptex_common import keys, redis_client, registry
from cryptex_common.markets import normalize_symbol
from cryptex_engine.decode import read_entry
from cryptex_engine.housekeeping import StreamTrimmed
from cryptex_engine.recovery import SnapshotUse, batches, find_start
from cryptex_engine.snapshots import gc_paused

BATCH = 1000
USES = {None: SnapshotUse.WHEN_TRIMMED, True: SnapshotUse.ALWAYS, False: SnapshotUse.NEVER}


class ReplayError(SystemExit):
    """Why a market cannot be rebuilt (exits the command with this message)."""


async def replay_market(redis_url: str, market: str, upto_seq: int | None = None,
                        use_snapshot: bool | None = None) -> dict[str, Any]:
    """{"market", "seq", "commands", "source", "stateHash", "lastStreamId"} of the core
    rebuilt up to `upto_seq` (default: the stream's end). use_snapshot: None = only when
    the stream was trimmed; True = always start from the snapshot (faster); False = never
    (fails on a trimmed stream)."""
    symbol = normalize_symbol(market)
    stream = keys.commands_stream(symbol)
    redis = redis_client.connect(redis_url, "replay", decode=True)
    try:
        spec = await registry.get_market(redis, symbol)
        if spec is None:
            raise ReplayError(f"unknown market {symbol}")
        try:
            start = await find_start(redis, spec, USES[use_snapshot])
        except StreamTrimmed as exc:
            raise ReplayError(f"{exc}: cannot replay") from exc
        core, last_id, commands = start.core, start.last_stream_id, 0
        if upto_seq is not None and upto_seq < core.seq:
            raise ReplayError(f"seq {upto_seq} is older than the snapshot (seq {core.seq}) and "
                              f"{stream} was trimmed: it cannot be rebuilt any more")
        async for entries in batches(redis, stream, last_id, BATCH):
            for stream_id, fields in entries:
                if upto_seq is not None and core.seq >= upto_seq:
                    break
                last_id = stream_id
                decoded, _ = read_entry(stream_id, fields, spec)
                if decoded is None:
                    continue  # undecodable, no lock envelope: the engine skips it too
                core.apply(decoded.command, decoded.ts_ms)
                commands += 1
            if upto_seq is not None and core.seq >= upto_seq:
                break
        if upto_seq is not None and core.seq < upto_seq:
            raise ReplayError(f"the stream holds only {core.seq} commands, not {upto_seq}")
        with gc_paused():
            state_hash = core.state_hash()
        return {"market": symbol, "seq": core.seq, "commands": commands, "source": start.source,
                "stateHash": state_hash, "lastStreamId": last_id}
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cryptex_engine replay",
                                     description="rebuild a market from its stream and print its state hash")
    parser.add_argument("--market", required=True)
    parser.add_argument("--upto-seq", type=int, default=None,
                        help="stop after this sequence (compare with the engine's /state seq)")
    parser.add_argument("--from-snapshot", action="store_true",
                        help="start from the stored snapshot (automatic when the stream was trimmed)")
    args = parser.parse_args(argv)
    url = os.environ.get("CRYPTEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    use_snapshot = True if args.from_snapshot else None
    result = asyncio.run(replay_market(url, args.market, args.upto_seq, use_snapshot))
    print(f"market {result['market']} seq {result['seq']} commands {result['commands']} "
          f"source {result['source']} lastStreamId {result['lastStreamId']} "
          f"stateHash {result['stateHash']}")
