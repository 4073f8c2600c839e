"""The settle script's depth cost: the whole REST book as one JSON string per batch (commit
ed183d4 and before) against the changed levels only (incremental depth), at a book depth.

    .venv/bin/python bench/bench_settle_depth.py <libs/common of the tree to measure> <levels per side>

e.g. a `git archive ed183d4` copy's libs/common, then this tree's. It prints Redis' own µs per
settle call (INFO commandstats), Redis CPU per batch (/proc) and AOF bytes per batch, over
4,000 batches that each change three levels (two set, one removed) and carry no balances,
orders, trades or publishes. Starts its own Redis (AOF on, everysec).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1] / "libs/common"))
import redis

from cryptex_common import keys
from cryptex_common.ledger import MarketDataWrite, ledger_script_source, settle_plan
from cryptex_launcher.stack import free_port

SYMBOL = "SOL/USDC"
BATCHES = 4000


def market_data(i: int, seq: int, book: list[list[str]]) -> Any:
    fields = MarketDataWrite.__dataclass_fields__
    if "depth_header" in fields:  # incremental: the changed levels only
        header = orjson.dumps({"market": SYMBOL, "lastUpdateId": seq, "ts": 1})
        levels = [("b", 12000 + i % 50, "120.00 1.5"), ("a", 12100 + i % 50, "121.00 1.5"), ("b", 11990, "")]
        return MarketDataWrite(SYMBOL, header, levels, False, 1000, [], [])
    whole = orjson.dumps({"market": SYMBOL, "lastUpdateId": seq, "bids": book, "asks": book, "ts": 1})
    return MarketDataWrite(SYMBOL, whole, 1000, [], [])  # type: ignore[arg-type]


def main() -> None:
    levels = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "yes",
                               "--appendfsync", "everysec", "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = redis.Redis(port=port)
        sha = r.script_load(ledger_script_source("settle_market.lua"))  # step A: the depth part
        r.set(keys.engine_epoch_key(SYMBOL), "1")
        r.set(keys.engine_lease_key(SYMBOL), "1")
        book = [[f"{120 + i * 0.01:.2f}", "1.5"] for i in range(levels)]
        r.config_resetstat()
        pipe = r.pipeline(transaction=False)
        for i in range(BATCHES):
            seq = 3 * i + 3
            call = settle_plan(symbol=SYMBOL, epoch=1, first_seq=seq - 2, last_seq=seq, batch_json=b"", balances=[],
                               orders=[], now_ms=1, market_data=market_data(i, seq, book)).market
            pipe.evalsha(sha, len(call.keys), *call.keys, *call.args)
            if i % 100 == 99:
                assert all(reply[0] == b"ok" for reply in pipe.execute())
        pipe.execute()
        stats = r.info("commandstats")["cmdstat_evalsha"]
        aof_bytes = r.info("persistence")["aof_current_size"]
        ticks = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_us = (int(ticks[11]) + int(ticks[12])) * 1e6 / 100 / BATCHES
        kind = "incremental" if "depth_header" in MarketDataWrite.__dataclass_fields__ else "whole book"
        print(f"{kind}, {levels} levels a side: settle {stats['usec'] / stats['calls']:.1f} µs a batch inside Redis, "
              f"Redis CPU {cpu_us:.1f} µs a batch, AOF {aof_bytes / BATCHES:.0f} bytes a batch")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
