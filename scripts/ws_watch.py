#!/usr/bin/env python3
"""Watch Cryptex WebSocket streams: one JSON message per line on stdout.

    python scripts/ws_watch.py depth@SOL/USDC trades@SOL/USDC
    CRYPTEX_API_KEY=... CRYPTEX_API_SECRET=... python scripts/ws_watch.py user.orders user.fills

Options: --url (default $CRYPTEX_WS_URL or ws://127.0.0.1:8081/ws), --count N (stop after N
data messages). Private streams (user.*) sign an AUTH message with the API key and secret.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys
import time

import aiohttp


def auth_message(api_key: str, secret: str) -> dict:
    ts = int(time.time() * 1000)
    signature = hmac.new(secret.encode(), f"{ts}GET/ws".encode(), hashlib.sha256).hexdigest()
    return {"method": "AUTH", "params": {"apiKey": api_key, "timestamp": ts,
                                         "signature": signature}, "id": "auth"}


async def watch(url: str, streams: list[str], count: int | None) -> int:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        if any(s.lower().startswith("user.") for s in streams):
            key, secret = os.environ.get("CRYPTEX_API_KEY"), os.environ.get("CRYPTEX_API_SECRET")
            if not key or not secret:
                print("user.* streams need CRYPTEX_API_KEY and CRYPTEX_API_SECRET", file=sys.stderr)
                return 2
            await ws.send_json(auth_message(key, secret))
        await ws.send_json({"method": "SUBSCRIBE", "params": streams, "id": "sub"})
        seen = 0
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(msg.data)
            if "error" in body:
                print(json.dumps(body), file=sys.stderr)
                return 1
            if "stream" in body:
                print(msg.data, flush=True)
                seen += 1
                if count is not None and seen >= count:
                    return 0
        print(f"closed: {ws.close_code} {ws.exception() or ''}", file=sys.stderr)
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("streams", nargs="+", help="e.g. depth@SOL/USDC trades.SOL_USDC user.fills")
    parser.add_argument("--url", default=os.environ.get("CRYPTEX_WS_URL", "ws://127.0.0.1:8081/ws"))
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    try:
        return asyncio.run(watch(args.url, args.streams, args.count))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
