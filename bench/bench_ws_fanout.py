#!/usr/bin/env python3
"""WebSocket fan-out benchmark: N clients on one market, R updates/s, 1 or 2 gateway processes.

    .venv/bin/python bench/bench_ws_fanout.py                       # the default scenarios
    .venv/bin/python bench/bench_ws_fanout.py --clients 5000 --gateways 2 --seconds 15

Starts its own Redis and `python -m cryptex_wsgateway` processes, registers SOL/USDC, opens N
client sockets from `--client-procs` processes (spread round-robin over the gateways), each
subscribed to `trades@SOL/USDC`, then publishes R messages/s on the engine's channel for
`--seconds`. Prints, per scenario: deliveries/s achieved vs. wanted (N x R), p50/p99 delay from
the publish to the client's receipt (sampled on ~1 in 50 sockets, which parse every frame; the
others only count bytes: every frame has the same size), the gateways' CPU use, and memory per
idle connection (gateway RSS growth after connecting and subscribing, before any traffic).
Not a test: it prints figures.

    .venv/bin/python bench/bench_ws_fanout.py --handler-costs 1 100 1000

prints instead the CPU per upstream message of the depth, trades (+ 1m kline) and
user.orders handlers in process (fake sockets, no Redis): the gateway's own per-message and
per-socket cost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STREAM = "trades@SOL/USDC"
PROBE_EVERY = 50


# --- the publisher's message (fixed size, so clients can count bytes) -----------------------
def trade_payload(i: int) -> bytes:
    trade = {"tradeId": f"{i:012d}", "market": "SOL/USDC", "price": "120.00",
             "quantity": "1.000", "quoteQuantity": "120.00000", "takerSide": "buy",
             "ts": int(time.time() * 1000), "seq": 10**12 + i, "bt": f"{time.time():.6f}"}
    return orjson.dumps([trade])


def frame_size() -> int:
    from cryptex_wsgateway.protocol import encode_text_frame

    raw = trade_payload(0)
    return len(encode_text_frame(b'{"stream":' + orjson.dumps(STREAM) + b',"data":' + raw + b"}"))


# --- client process ------------------------------------------------------------------------
class ClientProtocol(asyncio.Protocol):
    def __init__(self, probe: bool, ready: asyncio.Future) -> None:
        self.probe = probe
        self.ready = ready
        self.upgraded = False
        self.buf = b""
        self.bytes = 0
        self.delays: list[float] = []
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            _, _, rest = self.buf.partition(b"\r\n\r\n")
            self.upgraded = True
            self.buf = rest  # the SUBSCRIBE reply follows; ready once it arrived
            if not self.ready.done():
                self.ready.set_result(True)
            return
        self.bytes += len(data)
        if self.probe:
            now = time.time()
            self.buf += data
            while len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                start = 2 if n < 126 else (4 if n == 126 else 10)
                if n == 126 and len(self.buf) >= 4:
                    n = int.from_bytes(self.buf[2:4], "big")
                elif n == 127 and len(self.buf) >= 10:
                    n = int.from_bytes(self.buf[2:10], "big")
                if len(self.buf) < start + n:
                    break
                payload = self.buf[start:start + n]
                self.buf = self.buf[start + n:]
                at = payload.find(b'"bt":"')
                if at >= 0:
                    self.delays.append(now - float(payload[at + 6:at + 23]))
        else:
            self.buf = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


def masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


async def client_main(ports: list[int], count: int) -> None:
    loop = asyncio.get_running_loop()
    conns: list[ClientProtocol] = []
    sub = masked(orjson.dumps({"method": "SUBSCRIBE", "params": [STREAM], "id": 1}))

    async def open_one(i: int) -> None:
        port = ports[i % len(ports)]
        ready = loop.create_future()
        proto = ClientProtocol(i % PROBE_EVERY == 0, ready)
        transport, _ = await loop.create_connection(lambda: proto, "127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        await asyncio.wait_for(ready, 30)
        transport.write(sub)
        conns.append(proto)

    for start in range(0, count, 200):
        await asyncio.gather(*(open_one(i) for i in range(start, min(count, start + 200))))
    await asyncio.sleep(1.0)  # let the SUBSCRIBE replies arrive
    print(json.dumps({"ready": len(conns)}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "reset":
            for c in conns:
                c.bytes, c.delays = 0, []
            print(json.dumps({"reset": True}), flush=True)
        elif line == "report":
            delays = [d for c in conns for d in c.delays]
            print(json.dumps({"bytes": sum(c.bytes for c in conns), "delays": delays,
                              "closed": sum(c.closed for c in conns)}), flush=True)
            return


# --- orchestration -------------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"gateway on {port} not ready")


async def publish(redis_url: str, rate: int, seconds: float) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    sent, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            await r.publish(STREAM, trade_payload(sent))
            sent += 1
        await asyncio.sleep(max(0.0, (sent / rate) - (time.monotonic() - start)))
    await r.aclose()
    return sent


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_scenario(redis_url: str, clients: int, gateways: int, rate: int, seconds: float,
                 client_procs: int, coalesce_ms: float) -> dict:
    from tests.support.servers import free_port

    env = {**os.environ, "CRYPTEX_REDIS_URL": redis_url, "CRYPTEX_LOG_LEVEL": "WARNING",
           "CRYPTEX_MAX_QUEUE_MESSAGES": "100000", "CRYPTEX_COALESCE_MS": str(coalesce_ms),
           "CRYPTEX_IDLE_TIMEOUT_S": "3600"}
    gws, ports = [], []
    for _ in range(gateways):
        port = free_port()
        gws.append(subprocess.Popen([sys.executable, "-m", "cryptex_wsgateway"],
                                    env={**env, "CRYPTEX_PORT": str(port)},
                                    stdout=subprocess.DEVNULL))
        ports.append(port)
    procs: list[subprocess.Popen] = []
    try:
        for p in ports:
            wait_ready(p)
        time.sleep(0.5)
        rss_before = [rss_kb(g.pid) for g in gws]
        share = [clients // client_procs + (1 if i < clients % client_procs else 0)
                 for i in range(client_procs)]
        for n in share:
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--client", ",".join(map(str, ports)), str(n)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout is not None
            json.loads(p.stdout.readline())
        time.sleep(1.0)
        rss_after = [rss_kb(g.pid) for g in gws]
        per_conn_kb = (sum(rss_after) - sum(rss_before)) / clients
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("reset\n")
            p.stdin.flush()
            p.stdout.readline()
        cpu0 = [cpu_s(g.pid) for g in gws]
        t0 = time.monotonic()
        sent = asyncio.run(publish(redis_url, rate, seconds))
        time.sleep(2.0)  # drain
        wall = time.monotonic() - t0
        cpu = [(cpu_s(g.pid) - c) / wall for g, c in zip(gws, cpu0, strict=True)]
        total_bytes, delays, closed = 0, [], 0
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("report\n")
            p.stdin.flush()
            rep = json.loads(p.stdout.readline())
            total_bytes += rep["bytes"]
            delays += rep["delays"]
            closed += rep["closed"]
        delivered = total_bytes // frame_size()
        return {
            "clients": clients, "gateways": gateways, "rate": rate, "coalesce_ms": coalesce_ms,
            "published": sent, "wanted_per_s": clients * rate,
            "delivered": delivered, "expected": sent * clients,
            "delivered_per_s": round(delivered / seconds),
            "p50_ms": round(percentile(delays, 0.50) * 1000, 1),
            "p99_ms": round(percentile(delays, 0.99) * 1000, 1),
            "max_ms": round(max(delays, default=float("nan")) * 1000, 1),
            "gateway_cpu": [round(c, 2) for c in cpu],
            "idle_kb_per_conn": round(per_conn_kb, 1),
            "closed_sockets": closed,
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for g in gws:
            g.terminate()
            try:
                g.wait(15)
            except subprocess.TimeoutExpired:
                g.kill()


# --- per-message cost, in process (issue 12) --------------------------------------------------
class _NullTransport:
    """Takes every write; never slow."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def _handler_costs(sockets: int, messages: int) -> dict[str, float]:
    """CPU µs per upstream message of the gateway's depth, trades (+ the 1m kline) and
    user.orders handlers with `sockets` subscribed sockets, the hub flushing every 10
    messages into transports that discard the bytes: the gateway's own work, no sockets or
    Redis (their cost is the same per frame for every stream type)."""
    from redis.asyncio import Redis

    from cryptex_wsgateway.book import DepthTracker
    from cryptex_wsgateway.fanout import Connection
    from cryptex_wsgateway.gateway import Gateway
    from cryptex_wsgateway.klines import KlineBuilder
    from cryptex_wsgateway.settings import WsSettings
    from cryptex_wsgateway.streams import KLINE_INTERVALS_MS
    from cryptex_wsgateway.subscriptions import private_topic
    from tests.wsgateway.conftest import SOL

    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never used on these paths
    g = Gateway(WsSettings(max_queue_messages=10**7), redis)
    m = SOL.symbol
    g.markets, g.asset_decimals = {m: SOL}, {"SOL": 9, "USDC": 6}
    g.trackers[m] = DepthTracker(m)
    g.trackers[m].on_snapshot({"lastUpdateId": 0, "bids": [], "asks": []}, force=True)
    g.klines[m] = [KlineBuilder(m, i, ms) for i, ms in KLINE_INTERVALS_MS.items()]
    for i in range(sockets):
        conn = Connection(i, None, _NullTransport(), 0.0)  # type: ignore[arg-type]
        g.subs.add(conn, [f"depth@{m}", f"trades@{m}", f"kline_1m@{m}"], 10)
    user = Connection(-1, None, _NullTransport(), 0.0)  # type: ignore[arg-type]
    g.subs.add(user, [private_topic("user.orders", "u1")], 10)
    now = int(time.time() * 1000)
    depth = [orjson.dumps({"market": m, "U": i + 1, "u": i + 1, "pu": i, "ts": now,
                           "bids": [[f"{100 + i % 7}.00", f"{1 + i % 3}.000"]],
                           "asks": [[f"{110 + i % 5}.00", f"{2 + i % 3}.000"]]})
             for i in range(messages)]
    trades = [orjson.dumps([{"tradeId": str(i), "market": m, "price": "120.00",
                             "quantity": "1.000", "quoteQuantity": "120.00000",
                             "takerSide": "buy", "ts": now, "seq": i}]) for i in range(messages)]
    orders = [orjson.dumps({"type": "order", "data": {"orderId": str(i), "market": m,
                                                      "status": "new"}}) for i in range(messages)]
    out: dict[str, float] = {}
    for name, handle, msgs in (("depth", lambda raw: g._on_depth(m, raw), depth),
                               ("trades+kline_1m", lambda raw: g._on_trades(m, raw), trades),
                               ("user.orders", lambda raw: g._on_user("u1", raw), orders)):
        started = time.process_time()
        for i, raw in enumerate(msgs):
            handle(raw)
            if i % 10 == 9:
                g.hub.flush()
        g.hub.flush()
        out[name] = round(1e6 * (time.process_time() - started) / len(msgs), 1)
    await redis.aclose()
    return out


def handler_costs(socket_counts: list[int], messages: int) -> None:
    for sockets in socket_counts:
        costs = asyncio.run(_handler_costs(sockets, messages))
        print(json.dumps({"sockets": sockets, "cpu_us_per_message": costs}), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        import uvloop

        uvloop.run(client_main([int(p) for p in sys.argv[2].split(",")], int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description="WebSocket fan-out benchmark")
    parser.add_argument("--clients", type=int, nargs="*", default=None)
    parser.add_argument("--gateways", type=int, nargs="*", default=None)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--coalesce-ms", type=float, default=0.0)
    parser.add_argument("--handler-costs", type=int, nargs="*", metavar="SOCKETS",
                        help="only print the in-process CPU per upstream message of the depth, "
                             "trades and user handlers with these numbers of sockets")
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    if args.handler_costs:
        handler_costs(args.handler_costs, args.messages)
        return
    if args.clients and args.gateways:
        scenarios = [(c, g) for c in args.clients for g in args.gateways]
    else:
        scenarios = [(1000, 1), (5000, 1), (5000, 2)]

    import redis as sync_redis

    from cryptex_common.markets import load_markets_yaml
    from tests.support.servers import redis_server

    with redis_server() as srv:
        r = sync_redis.Redis.from_url(srv.url)
        with open(os.path.join(ROOT, "markets.yaml")) as f:
            for spec in load_markets_yaml(f.read()):
                r.hset("markets", spec.symbol, spec.model_dump_json(by_alias=True))
        print(f"cores={os.cpu_count()} frame={frame_size()} bytes", flush=True)
        for clients, gateways in scenarios:
            result = run_scenario(srv.url, clients, gateways, args.rate, args.seconds,
                                  args.client_procs, args.coalesce_ms)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
