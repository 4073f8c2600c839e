"""`python -m cryptex_engine reconcile [--json]`: one reconciler pass over every bucket's
outbox and every market's journal (reconcile.py), then what it repaired and the ledger's
conservation per asset. Exit status 0 when every asset is conserved, 1 when not."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson

from cryptex_common import redis_client
from cryptex_common.ledger import Ledger
from cryptex_engine.reconcile import reconcile_once


async def run(url: str) -> dict[str, Any]:
    redis = redis_client.connect(url, "reconcile", decode=True)
    try:
        ledger = Ledger(redis)
        result = await reconcile_once(redis, ledger)
        report = await ledger.conservation_report()
        conserved = all(r["held"] + r["inFlight"] == r["deposits"] - r["withdrawals"] for r in report.values())
        return {"handedOver": result.handed_over, "alreadyHanded": result.already_handed,
                "journalEntries": result.journal_entries, "seconds": round(result.seconds, 3),
                "conserved": conserved, "assets": report}
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cryptex_engine reconcile",
                                     description="hand over stuck orders, apply cut batches, check conservation")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    url = os.environ.get("CRYPTEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    out = asyncio.run(run(url))
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        print(f"handed over {out['handedOver']} (already handed {out['alreadyHanded']}), "
              f"journal entries applied {out['journalEntries']}, {out['seconds']} s, "
              f"conserved {out['conserved']}")
    sys.exit(0 if out["conserved"] else 1)
