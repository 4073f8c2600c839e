"""WebSocket delivery lag for bench/bench_stack.py: K clients on the gateway, as a process
of its own (so its CPU is measured apart from the servers and the load generator).

    python bench/stack_ws.py --url ws://127.0.0.1:8081/ws --clients 4 [--key K --secret S]

Every client subscribes to depth@M and trades@M; the first one also authenticates (when a
key is given) and subscribes to user.orders and user.fills. Lag = receive time - the event's
own timestamp (`ts`; `updatedAt` for user.orders), in ms, per stream type.

Driven on stdin, one command a line; answers one line on stdout:
  mark    -> "ok": start a new window
  report  -> a JSON object: for each stream type count, p50, p99, max (ms) since the mark,
             plus messages, errors and closed sockets
  quit    -> exits
Prints "ready" once every subscription is acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import sys
import time
from typing import Any

import aiohttp
import orjson


class Window:
    def __init__(self) -> None:
        self.lags: dict[str, list[float]] = {}
        self.messages = 0
        self.errors: list[str] = []

    def add(self, kind: str, lag_ms: float) -> None:
        self.lags.setdefault(kind, []).append(lag_ms)


def pct(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summarize(window: Window, closed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"messages": window.messages, "errors": window.errors[:5], "closed": closed}
    for kind, values in sorted(window.lags.items()):
        ordered = sorted(values)
        out[kind] = {"count": len(ordered), "p50": pct(ordered, 0.5), "p99": pct(ordered, 0.99),
                     "max": ordered[-1]}
    return out


async def client(index: int, args: argparse.Namespace, state: dict[str, Any], ready: asyncio.Event,
                 session: aiohttp.ClientSession) -> None:
    market = args.market
    streams = [f"depth@{market}", f"trades@{market}"]
    private = index == 0 and args.key and args.secret
    async with session.ws_connect(args.url, heartbeat=None, max_msg_size=0) as ws:
        if private:
            ts = int(time.time() * 1000)
            sig = hmac.new(args.secret.encode(), f"{ts}GET/ws".encode(), hashlib.sha256).hexdigest()
            await ws.send_str(orjson.dumps({"method": "AUTH", "params": {
                "apiKey": args.key, "timestamp": ts, "signature": sig}, "id": "auth"}).decode())
            streams += ["user.orders", "user.fills"]
        await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": streams, "id": "sub"}).decode())
        async for msg in ws:
            now_ms = time.time() * 1000
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            body = orjson.loads(msg.data)
            window: Window = state["window"]
            stream = body.get("stream")
            if stream is None:
                control_reply(index, body, args, state, ready)
                continue
            window.messages += 1
            record_latency(window, stream.split("@", 1)[0].lower(), body.get("data"), now_ms)
    state["closed"] += 1


def control_reply(index: int, body: dict[str, Any], args: argparse.Namespace, state: dict[str, Any],
                  ready: asyncio.Event) -> None:
    """A reply to this client's own request: an error, or the subscribe acknowledgement
    (the last client's sets `ready`)."""
    if "error" in body:
        state["window"].errors.append(f"client {index}: {body['error']}")
    elif body.get("id") == "sub":
        state["acked"] += 1
        if state["acked"] == args.clients:
            ready.set()


def record_latency(window: Window, kind: str, data: Any, now_ms: float) -> None:
    """The delivery latency of one data message, by the timestamp its stream carries."""
    if kind == "trades" and isinstance(data, list):
        for t in data:
            window.add("trades", now_ms - t["ts"])
    elif kind == "depth" and isinstance(data, dict):
        if data.get("e") == "depthUpdate":
            window.add("depth", now_ms - data["ts"])
    elif kind == "user.orders" and isinstance(data, dict) and "updatedAt" in data:
        window.add("user.orders", now_ms - data["updatedAt"])
    elif kind == "user.fills" and isinstance(data, dict) and "ts" in data:
        window.add("user.fills", now_ms - data["ts"])


async def main_async(args: argparse.Namespace) -> None:
    state: dict[str, Any] = {"window": Window(), "acked": 0, "closed": 0}
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(i, args, state, ready, session)) for i in range(args.clients)]
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([waiter, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            failed = [t for t in tasks if t.done()]
            why = repr(failed[0].exception()) if failed else "no acknowledgement in 30 s"
            print(f"failed: {why} {state['window'].errors}", flush=True)
            return
        print("ready", flush=True)
        while True:
            line = (await reader.readline()).decode().strip()
            if line in ("", "quit"):
                break
            if line == "mark":
                state["window"] = Window()
                print("ok", flush=True)
            elif line == "report":
                print(orjson.dumps(summarize(state["window"], state["closed"])).decode(), flush=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--market", default="SOL/USDC")
    parser.add_argument("--key", default="")
    parser.add_argument("--secret", default="")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
