"""The benchmark of record (issue 12): the whole stack as `./cryptex up --no-demo` starts it,
signed order traffic from wrk at 1, 8 and 64 clients, WebSocket subscribers listening.

    .venv/bin/python bench/bench_stack.py [--levels 1,8,64] [--seconds 8] [--warmup 2]
        [--ws-clients 4] [--profile [--profile-level 8]] [--json artifacts/bench_stack.json]
        [--markets N] [--redis-cluster]
    .venv/bin/python bench/bench_stack.py --self-check     # wrk's Lua HMAC against Python's

Per level it prints orders/s (every signed order request: new orders and cancels), latency
p50/p99/max (also per request kind), CPU microseconds per order for every process (the API,
each engine, the gateway, dbproc, Redis, PostgreSQL with all its backends, the launcher, the
load generator, the WebSocket clients, this driver), the WebSocket delivery lag and the
dbproc lag from the last trade to the 1m candle served by GET /api/v1/klines; then a summary
with the issue's targets next to the figures (printed, never asserted). Results also go to
artifacts/bench_stack.json.

How it runs: `python -m cryptex_launcher up --no-demo` (what `./cryptex up --no-demo` execs)
in a fresh state dir under /tmp on free ports, so its own Redis and PostgreSQL; 128 users
funded through the admin routes; bench/stack_ws.py (K WebSocket clients) as its own process;
then per level a short warm-up and a measured run of Debian's `wrk` with bench/wrk/orders.lua
(`-t N -c N`: N clients, one connection and its own users each; pure-LuaJIT HMAC-SHA256).
The mix per client is a cycle of four requests: a maker at mid, the opposite IOC taker
(a crossing pair: one trade), a resting limit 10-50 ticks from mid, and a cancel of that
client's oldest resting order (once more than 4 rest). CPU is utime+stime from /proc (wait4
for wrk and py-spy) between the start and the end of the measured run; dbproc and
PostgreSQL are measured until the candle has caught up, so their backlog counts too.
The run refuses to report a level where more than 1% of responses are not 200/202.

`--markets N`: the stack runs on a generated markets file (CRYPTEX_MARKETS_FILE) of N markets,
markets.yaml's SOL/USDC and N-1 copies of it (M1/USDC, ...), users hold every base asset, and
cycle c of wrk thread t trades on market (t + c) mod N (CX_MARKETS), so all N trade evenly;
`engine` is the sum over the engines (each in the JSON's cpu_detail). `--redis-cluster`: `up
--redis-cluster` (3 primaries + 3 replicas); `redis` is the sum over the six nodes (primaries
and replicas apart in cpu_detail), Redis' commandstats the sum over the primaries.

Everything runs on the same cores as the servers: wrk costs ~10x less per order than a
Python client, and its own CPU is printed next to the servers'. `--profile` records a
py-spy flame graph of every Python service (and the WebSocket clients) during one level
into artifacts/profiles/<process>.svg; py-spy's own CPU distorts that level's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT_DIR / "libs" / "launcher"))
from cryptex_launcher.processes import stack_processes  # noqa: E402
from cryptex_launcher.stack import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
LUA = BENCH / "wrk" / "orders.lua"
PY = sys.executable
ADMIN = "bench-stack-admin"
MARKET = "SOL/USDC"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

# The targets, printed next to the figures (never asserted).
TARGETS = {
    1: "p50 < 1.5 ms",
    8: ">= 3,000 orders/s, p99 < 20 ms, servers <= 600 us/order",
    64: ">= 5,000 orders/s, p99 < 50 ms, servers <= 300 us/order",
}
GENERATOR_ROW = "load generator"
SERVER_PROCS = ("api", "engine", "wsgateway", "dbproc", "redis", "postgres", "launcher")


def pct(ordered: Sequence[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


# --- /proc --------------------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[int, int, float, float, float, float] | None:
    """(pid, ppid, utime, stime, cutime, cstime) in seconds, or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # after the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return (pid, int(fields[1]), int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK,
            int(fields[13]) / CLK_TCK, int(fields[14]) / CLK_TCK)


def all_ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                out[st[0]] = st[1]
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all cores)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class Procs:
    """The stack's processes by name (from the launcher's children and PostgreSQL's pid file)."""

    launcher: int
    pg_data: Path
    cluster: bool = False
    named: dict[str, int] = field(default_factory=dict)

    def discover(self) -> None:
        ppids = all_ppids()
        self.named = {"launcher": self.launcher}
        for pid, ppid in ppids.items():
            if ppid != self.launcher:
                continue
            cmd = cmdline(pid)
            if "redis-server" in cmd:  # Redis rewrites it: "redis-server 127.0.0.1:PORT [cluster]"
                port = cmd.split("redis-server", 1)[1].split()[0].rpartition(":")[2] if self.cluster else ""
                self.named[f"redis@{port}" if self.cluster else "redis"] = pid
            elif "-m cryptex_engine" in cmd:
                market = cmd.split("--market", 1)[1].split()[0] if "--market" in cmd else "?"
                self.named[f"engine-{market.replace('/', '_')}"] = pid
            else:
                for svc in ("api", "wsgateway", "dbproc"):
                    if f"-m cryptex_{svc}" in cmd:
                        self.named[svc] = pid
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.named["postgres"] = int((self.pg_data / "postmaster.pid").read_text().split()[0])

    def python_services(self) -> dict[str, int]:
        return {n: p for n, p in self.named.items() if not n.startswith(("redis", "postgres", "launcher"))}


def cpu_sample(procs: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far per name, each with the children it has reaped (cutime/cstime);
    postgres = the postmaster, its live children and those it reaped, so backends that come
    and go are counted."""
    out: dict[str, float] = {}
    ppids = all_ppids() if "postgres" in procs else {}
    for name, pid in procs.items():
        st = proc_stat(pid)
        if st is None:
            continue
        if name == "postgres":
            total = st[2] + st[3] + st[4] + st[5]
            for child, parent in ppids.items():
                if parent == pid:
                    cst = proc_stat(child)
                    if cst:
                        total += cst[2] + cst[3] + cst[4] + cst[5]
            out[name] = total
        else:  # with the children it reaped (a Redis AOF rewrite, say)
            out[name] = st[2] + st[3] + st[4] + st[5]
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    out["bench driver"] = self_usage.ru_utime + self_usage.ru_stime
    out["_machine"] = machine_busy_s()
    return out


def run_measured(argv: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, float]:
    """Run a child to completion; (exit code, its CPU seconds from wait4's rusage)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    RUNNING.add(proc)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                break
            time.sleep(0.02)
        output = proc.stdout.read() if proc.stdout else b""  # a few lines: wrk's own summary
    finally:
        RUNNING.discard(proc)
    if proc.returncode != 0:
        sys.stderr.write(f"{argv[0]} exited with {proc.returncode}:\n{output.decode(errors='replace')[-2000:]}\n")
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode, usage.ru_utime + usage.ru_stime


RUNNING: set[subprocess.Popen[Any]] = set()


# --- the stack ------------------------------------------------------------------------------
PACKAGE_DIRS = ("libs/common", "libs/client", "libs/launcher", "apps/api", "apps/engine", "apps/wsgateway",
                "apps/dbproc")


def export_ref(ref: str, dest: Path) -> str:
    """`git archive <ref>` of this repository into dest (touches nothing in .git); its commit."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", commit], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {ref} failed")
    return commit


def write_markets(tree: Path, count: int, dest: Path) -> list[str]:
    """A markets YAML of `count` markets at dest: markets.yaml's SOL/USDC and count-1 copies
    of it on the same grid, M1/USDC, M2/USDC, ... (base assets M1, M2, ...); their symbols."""
    import yaml

    sys.path.insert(0, str(ROOT / "libs" / "common"))
    from cryptex_common.markets import load_markets_yaml

    first = next(m for m in yaml.safe_load((tree / "markets.yaml").read_text())["markets"] if m["symbol"] == MARKET)
    quote = first["quoteAsset"]
    specs = [first, *({**first, "symbol": f"M{i}/{quote}", "baseAsset": f"M{i}"} for i in range(1, count))]
    text = "# written by bench/bench_stack.py --markets\n" + yaml.safe_dump({"markets": specs}, sort_keys=False)
    load_markets_yaml(text)  # the launcher's own checks, before anything starts
    dest.write_text(text)
    return [m["symbol"] for m in specs]


def yaml_markets(path: Path) -> list[dict[str, Any]]:
    import yaml

    return list(yaml.safe_load(path.read_text())["markets"])


class Stack:
    """`python -m cryptex_launcher up --no-demo` in its own state dir on free ports, from this
    working tree or (tree=) another checkout, whose packages then come first on PYTHONPATH.
    market_count > 0: on a generated markets file (CRYPTEX_MARKETS_FILE) of that many markets,
    all traded; 0: on the tree's markets.yaml, SOL/USDC traded. cluster: `up --redis-cluster`."""

    def __init__(self, tree: Path = ROOT, market_count: int = 0, cluster: bool = False) -> None:
        self.tree = tree
        self.base = Path(tempfile.mkdtemp(prefix="cx-bench-"))
        self.state = self.base / "state"
        self.redis_port, self.pg_port = free_port(), free_port()
        self.api_port, self.ws_port = free_port(), free_port()
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.cluster = cluster
        self.markets_file = self.base / "markets.yaml" if market_count else None
        if self.markets_file is not None:
            self.traded = write_markets(tree, market_count, self.markets_file)
        else:
            self.traded = [MARKET]
        self.specs = yaml_markets(self.markets_file or tree / "markets.yaml")

    @property
    def argv(self) -> list[str]:
        return [PY, "-m", "cryptex_launcher", "up", "--no-demo", *(["--redis-cluster"] if self.cluster else [])]

    @property
    def redis_mode(self) -> str:
        return "cluster (3 primaries + 3 replicas, up --redis-cluster)" if self.cluster else "single node"

    def cluster_ports(self) -> list[int]:
        """The cluster nodes' ports: the names of their directories, <state>/redis-cluster/<port>/."""
        base = self.state / "redis-cluster"
        return sorted(int(d.name) for d in base.iterdir() if d.name.isdigit()) if base.is_dir() else []

    def redis_roles(self) -> dict[int, str]:
        """port -> "master"/"slave" (INFO replication) of every node; {} for a single Redis."""
        import redis

        roles: dict[int, str] = {}
        for port in self.cluster_ports() if self.cluster else []:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=5) as client:
                roles[port] = str(client.info("replication")["role"])
        return roles

    def stats_ports(self) -> list[int]:
        """Where INFO commandstats is summed: the primaries of a cluster, or the one Redis."""
        return sorted(p for p, role in self.redis_roles().items() if role == "master") if self.cluster \
            else [self.redis_port]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEX_")}
        env.update({
            "CRYPTEX_STATE_DIR": str(self.state), "CRYPTEX_LOCAL_REDIS_PORT": str(self.redis_port),
            "CRYPTEX_LOCAL_PG_PORT": str(self.pg_port), "CRYPTEX_API_PORT": str(self.api_port),
            "CRYPTEX_WS_PORT": str(self.ws_port), "CRYPTEX_ADMIN_TOKEN": ADMIN, "PYTHONUNBUFFERED": "1",
        })
        if self.markets_file is not None:
            env["CRYPTEX_MARKETS_FILE"] = str(self.markets_file)
        if self.tree != ROOT:
            env["PYTHONPATH"] = os.pathsep.join([*(str(self.tree / d) for d in PACKAGE_DIRS),
                                                 *filter(None, [os.environ.get("PYTHONPATH")])])
        return env

    def start(self, timeout_s: float = 180) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env(), cwd=self.tree,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        proc = self.proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not any(line.startswith("Cryptex is up") for line in self.lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                how = f"exited with {proc.returncode}" if proc.poll() is not None else f"not up after {timeout_s:.0f} s"
                raise RuntimeError(f"`python {' '.join(self.argv[1:])}` did not come up ({how}); its last lines:\n"
                                   + "".join(self.lines[-30:]))
            time.sleep(0.1)

    def leftovers(self) -> dict[int, str]:
        """Live processes of this stack; a service counts only with this stack's Redis URL
        and admin token together in its environment."""
        token = f"CRYPTEX_ADMIN_TOKEN={ADMIN}".encode()
        found = stack_processes(self.state, self.redis_port, (token,))
        for port in self.cluster_ports():  # a service's redis+cluster:// URL ends in one node's address
            found.update(stack_processes(self.state, port, (token,)))
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        left = self.leftovers()
        for pid, cmd in left.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT if "postgres" in cmd else signal.SIGTERM)
        deadline = time.monotonic() + 15
        while left and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in left):
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if os.environ.get("CX_BENCH_KEEP"):
            print(f"kept {self.base} (logs in state/logs; CX_BENCH_KEEP); the stack is stopped")
        else:
            shutil.rmtree(self.base, ignore_errors=True)


# --- HTTP helpers (the driver's own, cheap and rare) -----------------------------------------
def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


async def fund_users(api: str, count: int, assets: Sequence[str] = ("SOL",)) -> list[tuple[str, str, str]]:
    """`count` users with plenty of every base asset in `assets` and of USDC: (userId, apiKey,
    apiSecret). The admin routes are limited per client address (429): waits and retries."""
    sys.path.insert(0, str(ROOT / "libs" / "client"))
    from cryptex_client import CryptexClient

    users: list[tuple[str, str, str]] = []
    sem = asyncio.Semaphore(8)
    funds = {**dict.fromkeys(assets, "1000000"), "USDC": "1000000000"}

    async def admin_call(call: Any, expect: int, *argv: str) -> Any:
        for _ in range(200):
            async with sem:
                resp = await call(*argv)
            if resp.status != 429:
                break
            await asyncio.sleep(0.2)
        if resp.status != expect:
            raise RuntimeError(f"{call.__name__} failed: {resp.status} {resp.body}")
        return resp.body

    async with CryptexClient(api, admin_token=ADMIN) as admin:
        async def one(i: int) -> None:
            user = await admin_call(admin.create_user, 201)
            for asset, amount in funds.items():
                await admin_call(admin.deposit, 200, user["userId"], asset, amount,
                                 f"bench{i}-seed-{user['userId']}-{asset}")
            users.append((user["userId"], user["apiKey"], user["apiSecret"]))
        await asyncio.gather(*(one(i) for i in range(count)))
    return users


def candle_lag_ms(api: str, markets: Sequence[str] = (MARKET,),
                  timeout_s: float = 30) -> tuple[float | None, dict[str, int]]:
    """ms from the newest last trade's own ts (over `markets`) until the 1m candles (GET
    /api/v1/klines) of every market count every trade so far (trade ids are the engine's
    gap-free sequence, so sum(count) == last id); and the last trade id per market."""
    last: dict[str, tuple[int, int]] = {}
    for tag in (m.replace("/", "_") for m in markets):
        status, trades = get_json(f"{api}/api/v1/trades?market={tag}&limit=1")
        if status == 200 and trades:
            last[tag] = (int(trades[0]["tradeId"]), int(trades[0]["ts"]))
    ids = {tag: last_id for tag, (last_id, _) in last.items()}
    pending = dict(ids)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for tag, last_id in list(pending.items()):
            status, rows = get_json(f"{api}/api/v1/klines?market={tag}&interval=1m&limit=1000")
            if status == 200 and sum(int(r[8]) for r in rows) >= last_id:
                del pending[tag]
        if pending:
            time.sleep(0.01 if status == 200 else 0.2)
    if pending or not last:
        return None, ids
    return time.time() * 1000 - max(ts for _, ts in last.values()), ids


# --- WebSocket clients --------------------------------------------------------------------
class WsClients:
    def __init__(self, url: str, clients: int, key: str, secret: str) -> None:
        self.proc = subprocess.Popen([PY, str(BENCH / "stack_ws.py"), "--url", url, "--clients", str(clients),
                                      "--market", MARKET, "--key", key, "--secret", secret],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        RUNNING.add(self.proc)
        line = self._read(40)
        if line != "ready":
            raise RuntimeError(f"WebSocket clients did not start: {line!r}")

    def _read(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout_s)
        return box[0].strip() if box else ""

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read(10)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.ask("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
        RUNNING.discard(self.proc)


# --- wrk ---------------------------------------------------------------------------------
def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing Debian's wrk (apt-get install -y wrk) ...", flush=True)
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, capture_output=True)
        found = shutil.which("wrk")
    return found


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    socket_errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)      # "kind:status" -> n
    latencies_us: dict[str, list[int]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    vectors: list[str] = field(default_factory=list)
    hmac_us: float | None = None
    cpu_s: float = 0.0
    exit_code: int = 0

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return sum(n for k, n in self.statuses.items() if k.endswith((":200", ":202")))


def run_wrk(wrk: str, url: str, clients: int, seconds: float, users_file: Path, out: Path,
            extra_env: dict[str, str] | None = None) -> WrkResult:
    env = {**os.environ, "CX_USERS": str(users_file), "CX_THREADS": str(clients), "CX_OUT": str(out),
           "CX_MARKET": MARKET.lower(), **(extra_env or {})}
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    if wrk == "python":
        argv = [PY, str(BENCH / "stack_pyload.py"), url, str(max(1, round(seconds)))]
    else:
        argv = [wrk, "-t", str(clients), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
                "-s", str(LUA), url]
    code, cpu = run_measured(argv, env, seconds + 60)
    res = WrkResult(cpu_s=cpu, exit_code=code)
    if not out.exists():
        raise RuntimeError(f"wrk wrote no results (exit {code})")
    for line in out.read_text().splitlines():
        head, _, rest = line.partition(" ")
        if head == "summary":
            kv = dict(p.split("=") for p in rest.split())
            res.requests = int(kv.pop("requests"))
            res.duration_s = int(kv.pop("duration_us")) / 1e6
            kv.pop("bytes", None)
            kv.pop("status", None)  # wrk's count of HTTP statuses >= 400: in the status counts already
            res.socket_errors = {k: int(v) for k, v in kv.items() if int(v)}
        elif head == "status":
            _, key, n = rest.split()
            res.statuses[key] = res.statuses.get(key, 0) + int(n)
        elif head == "lat":
            kind, _, values = rest.partition(" ")
            res.latencies_us.setdefault(kind, []).extend(int(float(v)) for v in values.split())
        elif head == "bad":
            res.bad.append(rest)
        elif head == "vector":
            res.vectors.append(rest.strip())
        elif head == "hmac_us":
            res.hmac_us = float(rest)
    return res


# --- profiling -------------------------------------------------------------------------------
def start_profiles(procs: dict[str, int], seconds: float) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    pyspy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if not pyspy:
        sys.exit("--profile needs py-spy: .venv/bin/pip install -e '.[bench]' (or pip install py-spy)")
    outdir = ROOT / "artifacts" / "profiles"
    outdir.mkdir(parents=True, exist_ok=True)
    started = []
    for name, pid in procs.items():
        svg = outdir / f"{name}.svg"
        with contextlib.suppress(FileNotFoundError):
            svg.unlink()
        # --gil: only samples holding the GIL. Without it, on this VM py-spy takes a thread
        # waiting in uvloop's epoll_pwait for a running one: 40-60% of an engine's samples
        # were that idle wait (leaf Runner.run; epoll_pwait with --native).
        p = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--format", "flamegraph", "-o", str(svg),
                              "--duration", str(int(seconds)), "--rate", "200", "--nonblocking", "--gil"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        RUNNING.add(p)
        started.append((name, p, svg))
    return started


def finish_profiles(started: list[tuple[str, subprocess.Popen[bytes], Path]]) -> tuple[float, list[str]]:
    """Wait for every py-spy; (their CPU seconds, a line per profile)."""
    cpu, lines = 0.0, []
    for name, p, svg in started:
        usage = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
        else:
            p.kill()
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = -9
        RUNNING.discard(p)
        cpu += usage.ru_utime + usage.ru_stime if usage else 0.0
        err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
        if svg.exists() and svg.stat().st_size > 0:
            lines.append(f"  {name:16s} {svg.relative_to(ROOT)} ({svg.stat().st_size // 1024} KiB)")
        else:
            lines.append(f"  {name:16s} NO PROFILE (py-spy exit {p.returncode}): {err[-300:]}")
    return cpu, lines


def redis_commandstats(ports: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Redis' own accounting, `INFO commandstats`, summed over `ports` (a cluster's primaries):
    command -> (calls, µs inside it). A script's inner commands are counted both in their own
    rows and in its EVALSHA row."""
    import redis  # the bench's own venv holds it

    out: dict[str, tuple[int, int]] = {}
    for port in ports:
        try:
            with redis.Redis(port=port, socket_timeout=5) as client:
                info = client.info("commandstats")
        except redis.RedisError:
            continue
        for name, row in info.items():
            calls, usec = out.get(name.removeprefix("cmdstat_"), (0, 0))
            out[name.removeprefix("cmdstat_")] = (calls + int(row["calls"]), usec + int(row["usec"]))
    return out


def commandstats_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                       orders: int) -> list[tuple[str, float, float]]:
    """(command, calls per order, µs per order) over a level, largest time first."""
    rows = []
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls > c0 and orders:
            rows.append((name, (calls - c0) / orders, (usec - u0) / orders))
    return sorted(rows, key=lambda r: -r[2])


# --- one level ---------------------------------------------------------------------------------
def level(args: argparse.Namespace, wrk: str, stack: Stack, procs: Procs, ws: WsClients, users_file: Path,
          clients: int, workdir: Path, round_: int = 0) -> dict[str, Any]:
    out = workdir / f"wrk-{clients}.txt"
    markets = {"CX_MARKETS": ",".join(m.lower() for m in stack.traded)}
    if args.warmup > 0:
        run_wrk(wrk, stack.api, clients, args.warmup, users_file, out, markets)
    procs.discover()
    tracked = {**procs.named, "ws clients": ws.proc.pid}
    profiling = args.profile and clients == args.profile_level and round_ == 0
    ws.ask("mark")
    load0 = os.getloadavg()
    stats_ports = stack.stats_ports()
    before = cpu_sample(tracked)
    redis_before = redis_commandstats(stats_ports)
    profiles = start_profiles({**procs.python_services(), "ws-clients": ws.proc.pid}, args.seconds) \
        if profiling else []
    res = run_wrk(wrk, stack.api, clients, args.seconds, users_file, out, markets)
    after = cpu_sample(tracked)
    redis_after = redis_commandstats(stats_ports)
    ws_report = json.loads(ws.ask("report") or "{}")
    lag_ms, last_trades = candle_lag_ms(stack.api, stack.traded)
    after_db = cpu_sample(tracked)
    pyspy_cpu, profile_lines = finish_profiles(profiles) if profiles else (0.0, [])
    load1 = os.getloadavg()
    pids_before = dict(procs.named)
    procs.discover()
    restarted = sorted(n for n, pid in pids_before.items() if procs.named.get(n) != pid)

    cpu: dict[str, float] = {}
    for name in tracked:
        end = after_db if name in ("dbproc", "postgres") else after
        if name in before and name in end:
            cpu[name] = end[name] - before[name]
    cpu["bench driver"] = after["bench driver"] - before["bench driver"]
    cpu[GENERATOR_ROW] = res.cpu_s
    if profiling:
        cpu["py-spy"] = pyspy_cpu
    machine = after["_machine"] - before["_machine"]
    ours = sum(v for k, v in cpu.items() if k not in ("dbproc", "postgres")) + \
        sum(after[k] - before[k] for k in ("dbproc", "postgres") if k in before and k in after)
    wall = res.duration_s or args.seconds
    result = level_figures(res, clients, round_, wall, cpu, stack.redis_roles())
    result.update({
        "machine_busy_cores": machine / wall,
        "outside_bench_cores": max(0.0, machine - ours) / wall,
        "loadavg_before": load0[0], "loadavg_after": load1[0],
        "ws_lag_ms": ws_report,
        "candle_lag_ms": lag_ms, "last_trade_id": sum(last_trades.values()), "last_trade_ids": last_trades,
        "profiled": profiling, "profiles": profile_lines,
        "restarted": restarted,
        "redis_commands": commandstats_delta(redis_before, redis_after, res.completed),
        "redis_commandstats_ports": stats_ports,
    })
    return result


def fold_cpu(cpu: dict[str, float], roles: dict[int, str]) -> tuple[dict[str, float], dict[str, Any]]:
    """`engine` = the sum over the engines (engine-<market>), `redis` over a cluster's nodes
    (redis@<port>); the parts go to the detail: per engine, per node with its role, and the
    primaries' and the replicas' sums."""
    folded: dict[str, float] = {}
    engines: dict[str, float] = {}
    nodes: dict[str, float] = {}
    for name, v in cpu.items():
        if name.startswith("engine-"):
            engines[name.removeprefix("engine-")] = v
        elif name.startswith("redis@"):
            nodes[name.removeprefix("redis@")] = v
        else:
            folded[name] = v
    detail: dict[str, Any] = {}
    if engines:
        folded["engine"] = sum(engines.values())
        detail["engines"] = engines
    if nodes:
        folded["redis"] = sum(nodes.values())
        role = {p: roles.get(int(p), "?") for p in nodes}
        detail["redis_nodes"] = {p: {"role": role[p], "cpu_s": v} for p, v in sorted(nodes.items())}
        detail["redis_primaries"] = sum(v for p, v in nodes.items() if role[p] == "master")
        detail["redis_replicas"] = sum(v for p, v in nodes.items() if role[p] == "slave")
    return folded, detail


def level_figures(res: WrkResult, clients: int, round_: int, wall: float, raw_cpu: dict[str, float],
                  roles: dict[int, str]) -> dict[str, Any]:
    """The level's orders, latencies, statuses and CPU (per process, servers, the detail)."""
    n = res.completed
    cpu, detail = fold_cpu(raw_cpu, roles)

    def per_order(v: float) -> float:
        return v * 1e6 / n if n else float("nan")

    detail_us: dict[str, Any] = {k: per_order(v) for k, v in detail.items() if not isinstance(v, dict)}
    detail_us["engines"] = {k: per_order(v) for k, v in detail.get("engines", {}).items()}
    if "redis_nodes" in detail:
        detail_us["redis_nodes"] = {p: {"role": d["role"], "us_per_order": per_order(d["cpu_s"])}
                                    for p, d in detail["redis_nodes"].items()}
    lat_all = sorted(v for vs in res.latencies_us.values() for v in vs)
    return {
        "clients": clients, "round": round_, "seconds": wall, "orders": n,
        "orders_per_s": n / wall if wall else 0.0,
        "new_orders": sum(v for k, v in res.statuses.items() if not k.startswith("cancel")),
        "cancels": sum(v for k, v in res.statuses.items() if k.startswith("cancel")),
        "latency_ms": {"p50": pct(lat_all, 0.5) / 1000, "p99": pct(lat_all, 0.99) / 1000,
                       "max": (lat_all[-1] if lat_all else float("nan")) / 1000},
        "latency_by_kind_ms": {k: {"n": len(v), "p50": pct(sorted(v), 0.5) / 1000, "p99": pct(sorted(v), 0.99) / 1000}
                               for k, v in sorted(res.latencies_us.items())},
        "statuses": dict(sorted(res.statuses.items())),
        "socket_errors": res.socket_errors,
        "bad_responses": res.bad,
        "ok_fraction": res.ok / n if n else 0.0,
        "cpu_s": cpu,
        "cpu_us_per_order": {k: per_order(v) for k, v in cpu.items()},
        "cpu_detail_s": detail,
        "cpu_detail_us_per_order": detail_us,
        "servers_us_per_order": per_order(sum(v for k, v in cpu.items() if k.startswith(SERVER_PROCS))),
    }


def fmt_ms(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.2f}"


def print_level(r: dict[str, Any]) -> None:
    c = r["clients"]
    print(f"\n== {c} client{'s' if c != 1 else ''}{label_round(r)}: {r['seconds']:.1f} s, {r['orders']:,} orders "
          f"({r['new_orders']:,} new, {r['cancels']:,} cancels) ==")
    if r["profiled"]:
        print("   (profiled with py-spy: CPU and latency of this level are distorted)")
    lat = r["latency_ms"]
    print(f"orders/s {r['orders_per_s']:,.0f}   p50 {fmt_ms(lat['p50'])} ms  p99 {fmt_ms(lat['p99'])} ms  "
          f"max {fmt_ms(lat['max'])} ms   target: {TARGETS.get(c, '-')}")
    print("  by kind: " + "; ".join(f"{k} {v['n']:,} p50 {fmt_ms(v['p50'])} p99 {fmt_ms(v['p99'])}"
                                    for k, v in r["latency_by_kind_ms"].items()))
    print(f"  statuses: {r['statuses']}" + (f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""))
    if r.get("restarted"):
        print(f"  !! restarted or gone during the level (their CPU is wrong): {', '.join(r['restarted'])}")
    if r["ok_fraction"] < 0.99:
        print(f"  !! only {r['ok_fraction']:.1%} of responses were 200/202: examples:")
        for b in r["bad_responses"]:
            print(f"     {b[:200]}")
    print(f"  {'process':22s} {'CPU s':>7s} {'cores':>6s} {'us/order':>9s}")
    for name, v in sorted(r["cpu_s"].items(), key=lambda kv: (not kv[0].startswith(SERVER_PROCS), kv[0])):
        print(f"  {name:22s} {v:7.2f} {v / r['seconds']:6.2f} {r['cpu_us_per_order'][name]:9.0f}")
    print(f"  {'servers total':22s} {'':7s} {'':6s} {r['servers_us_per_order']:9.0f}")
    print_cpu_detail(r.get("cpu_detail_us_per_order", {}))
    print(f"  machine busy {r['machine_busy_cores']:.2f} of {NCPU} cores; outside this bench "
          f"{r['outside_bench_cores']:.2f} cores; load average {r['loadavg_before']:.2f} -> {r['loadavg_after']:.2f}")
    ws = r["ws_lag_ms"]
    parts = [f"{k} n={v['count']:,} p50 {v['p50']:.1f} p99 {v['p99']:.1f} max {v['max']:.1f}"
             for k, v in ws.items() if isinstance(v, dict)]
    if r.get("redis_commands"):
        print("  redis by command, calls and µs per order: " + ", ".join(
            f"{name} {calls:.2f}x {us:.0f}" for name, calls, us in r["redis_commands"][:8]))
    print("  WebSocket lag ms: " + ("; ".join(parts) or "no messages") +
          (f"  closed sockets {ws['closed']}" if ws.get("closed") else "") +
          (f"  errors {ws['errors']}" if ws.get("errors") else ""))
    ids = r.get("last_trade_ids") or {}
    if len(ids) > 1:
        print(f"  dbproc: last trades of {len(ids)} markets (trades so far per market {min(ids.values()):,}-"
              f"{max(ids.values()):,}) -> every 1m candle {fmt_ms(r['candle_lag_ms'])} ms")
    else:
        print(f"  dbproc: last trade (id {r['last_trade_id']:,}) -> 1m candle {fmt_ms(r['candle_lag_ms'])} ms")
    for line in r["profiles"]:
        print(line)


def print_cpu_detail(d: dict[str, Any]) -> None:
    """The parts of `engine` (each engine) and of a cluster's `redis` (primaries, replicas)."""
    engines = d.get("engines") or {}
    if len(engines) > 1:
        print("  engine = sum of " + ", ".join(f"{k} {v:.0f}" for k, v in engines.items()) + " us/order")
    if "redis_nodes" in d:
        print(f"  redis = primaries {d['redis_primaries']:.0f} + replicas {d['redis_replicas']:.0f} us/order; "
              "by node " + ", ".join(f"{p} {v['role']} {v['us_per_order']:.0f}" for p, v in d["redis_nodes"].items()))


def ws_p99(r: dict[str, Any]) -> float | None:
    """The worse of depth's and trades' p99 (the user streams carry a few dozen messages a
    level: their p99 is their max; the level's table shows them)."""
    vals = [v["p99"] for k, v in r["ws_lag_ms"].items() if isinstance(v, dict) and k in ("depth", "trades")]
    return max(vals) if vals else None


def label_round(r: dict[str, Any]) -> str:
    return f" (round {r['round'] + 1})" if r.get("round") else ""


def medians(results: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per client count over its rounds: median, min and max of the headline figures."""
    import statistics

    out: dict[int, dict[str, Any]] = {}
    for clients in dict.fromkeys(r["clients"] for r in results):
        rs = [r for r in results if r["clients"] == clients]
        figures = {
            "orders_per_s": [r["orders_per_s"] for r in rs],
            "p50_ms": [r["latency_ms"]["p50"] for r in rs],
            "p99_ms": [r["latency_ms"]["p99"] for r in rs],
            "servers_us_per_order": [r["servers_us_per_order"] for r in rs],
            "generator_us_per_order": [r["cpu_us_per_order"][GENERATOR_ROW] for r in rs],
            "outside_bench_cores": [r["outside_bench_cores"] for r in rs],
        }
        out[clients] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                        for k, v in figures.items()}
        out[clients]["rounds"] = len(rs)
    return out


def print_summary(results: list[dict[str, Any]], setup: str = "") -> None:
    print(f"\n== summary =={f'  {setup}' if setup else ''}  (orders/s: new orders and cancels; "
          f"new/s: new orders alone)")
    head = (f"{'clients':>7s} {'orders/s':>9s} {'new/s':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} "
            f"{'servers us/o':>12s} {'load us/o':>9s} {'WS p99 ms':>9s} {'candle ms':>9s} {'ok':>6s}  target")
    print(head)
    for r in results:
        lat = r["latency_ms"]
        mark = "+" if r.get("round") else " "
        print(f"{r['clients']:7d}{mark}{r['orders_per_s']:9,.0f} {r['new_orders'] / r['seconds']:6,.0f} "
              f"{fmt_ms(lat['p50']):>7s} {fmt_ms(lat['p99']):>7s} "
              f"{fmt_ms(lat['max']):>7s} {r['servers_us_per_order']:12.0f} "
              f"{r['cpu_us_per_order'][GENERATOR_ROW]:9.0f} {fmt_ms(ws_p99(r)):>9s} "
              f"{fmt_ms(r['candle_lag_ms']):>9s} {r['ok_fraction']:6.1%}  {TARGETS.get(r['clients'], '-')}")
    if any(r.get("round") for r in results):
        print("(+ = a later round)\n\nmedian [min-max] over the rounds:")
        for clients, m in medians(results).items():
            def f(key: str, digits: int = 0, m: dict[str, Any] = m) -> str:
                v = m[key]
                return f"{v['median']:,.{digits}f} [{v['min']:,.{digits}f}-{v['max']:,.{digits}f}]"
            print(f"  {clients:3d} clients: orders/s {f('orders_per_s')}, p50 {f('p50_ms', 2)} ms, "
                  f"p99 {f('p99_ms', 1)} ms, servers {f('servers_us_per_order')} us/order, "
                  f"load generator {f('generator_us_per_order')} us/order, "
                  f"outside cores {f('outside_bench_cores', 2)}")
    names = sorted({k for r in results for k in r["cpu_us_per_order"]},
                   key=lambda k: (not k.startswith(SERVER_PROCS), k))
    print("\nCPU us per order by process:")
    print(f"  {'process':22s} " + " ".join(f"{r['clients']:>7d}{'+' if r.get('round') else 'c'}" for r in results))
    for name in names:
        print(f"  {name:22s} " + " ".join(f"{r['cpu_us_per_order'].get(name, float('nan')):8.0f}" for r in results))


def print_comparison(results: list[dict[str, Any]], path: Path) -> None:
    """Old -> new per level for the headline figures, from an earlier JSON of this bench."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"\n--compare {path}: unreadable ({exc})")
        return
    before, now = medians(old.get("levels", [])), medians(results)
    print(f"\n== compared with {path} (commit {old.get('commit', '?')[:12]}, {old.get('date', '?')}, "
          f"{setup_line(old)}; medians over rounds) ==")
    print(f"{'clients':>7s} {'orders/s':>19s} {'p99 ms':>17s} {'servers us/order':>19s} {'outside cores':>15s}")
    for clients, r in now.items():
        o = before.get(clients)
        if o is None:
            continue

        def pair(a: float, b: float, digits: int = 0) -> str:
            change = f"{(b - a) / a:+.0%}" if a else ""
            return f"{a:,.{digits}f}->{b:,.{digits}f} {change}"
        def med(m: dict[str, Any], key: str) -> float:
            return float(m[key]["median"])
        print(f"{clients:7d} {pair(med(o, 'orders_per_s'), med(r, 'orders_per_s')):>19s} "
              f"{pair(med(o, 'p99_ms'), med(r, 'p99_ms'), 1):>17s} "
              f"{pair(med(o, 'servers_us_per_order'), med(r, 'servers_us_per_order')):>19s} "
              f"{med(o, 'outside_bench_cores'):.2f}->{med(r, 'outside_bench_cores'):.2f}")


def setup_line(meta: dict[str, Any]) -> str:
    """Markets and Redis mode of a run (an older JSON without them: markets.yaml, SOL/USDC
    traded, one Redis)."""
    traded = meta.get("markets_traded") or [MARKET]
    count = meta.get("market_count", "markets.yaml's")
    return (f"{count} markets, orders on {len(traded)} ({', '.join(traded[:3])}{', ...' if len(traded) > 3 else ''}), "
            f"Redis {meta.get('redis_mode', 'single node')}")


# --- self-check: the Lua HMAC and request signing against Python's --------------------------
def self_check(wrk: str) -> int:
    """Vectors of many lengths through the Lua HMAC, then 2 s of wrk traffic against a
    little server that verifies every signature as the API does and answers like it."""
    from aiohttp import web

    sys.path.insert(0, str(ROOT / "libs" / "common"))
    from cryptex_common.auth import signature_matches

    rng = random.Random(7)
    vectors = []
    for klen in (0, 1, 32, 63, 64, 65, 100, 200):
        for mlen in (0, 1, 55, 56, 63, 64, 65, 119, 120, 200, 1000):
            vectors.append((rng.randbytes(klen), rng.randbytes(mlen)))
    users = [(f"user{i}", secrets.token_hex(16), secrets.token_hex(32)) for i in range(6)]
    secrets_by_key = {u[1]: u[2] for u in users}
    seen: set[str] = set()
    counts = {"ok": 0, "bad_signature": 0, "replay": 0, "stale": 0, "bad_cancel": 0}
    issued: dict[str, str] = {}
    next_id = [0]

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        key, ts, sig = (request.headers.get(h, "") for h in ("X-CX-KEY", "X-CX-TS", "X-CX-SIGN"))
        path_qs = request.raw_path
        if not signature_matches(secrets_by_key.get(key, "?"), ts, request.method, path_qs, body, sig):
            counts["bad_signature"] += 1
            return web.json_response({"code": "BAD_SIGNATURE"}, status=401)
        if sig in seen:
            counts["replay"] += 1
            return web.json_response({"code": "REPLAYED_REQUEST"}, status=401)
        seen.add(sig)
        if abs(int(ts) - time.time() * 1000) > 5000:
            counts["stale"] += 1
            return web.json_response({"code": "STALE_TIMESTAMP"}, status=401)
        if request.method == "DELETE":
            oid = request.query.get("orderId", "")
            if issued.pop(oid, None) != key:
                counts["bad_cancel"] += 1
                return web.json_response({"code": "ORDER_NOT_FOUND"}, status=404)
        else:
            json.loads(body)
            next_id[0] += 1
            issued[str(next_id[0])] = key
        counts["ok"] += 1
        return web.json_response({"order": {"orderId": str(next_id[0])}, "fills": []})

    async def serve(port: int, stop: asyncio.Event) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
        await runner.cleanup()

    port = free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(serve(port, stop)), daemon=True)
    thread.start()
    time.sleep(0.5)
    with tempfile.TemporaryDirectory() as tmp:
        users_file = Path(tmp) / "users.txt"
        users_file.write_text("".join(f"{k} {s}\n" for _, k, s in users))
        vec_file = Path(tmp) / "vectors.txt"
        vec_file.write_text("".join(f"{k.hex()} {m.hex()}\n" for k, m in vectors))
        res = run_wrk(wrk, f"http://127.0.0.1:{port}", 2, 2, users_file, Path(tmp) / "out.txt",
                      {"CX_HMAC_VECTORS": str(vec_file), "CX_HMAC_BENCH": "1"})
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)
    expected = [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in vectors]
    vec_ok = sum(a == b for a, b in zip(res.vectors, expected, strict=False))
    print(f"HMAC vectors: {vec_ok}/{len(expected)} equal to Python's hmac "
          f"(keys 0-200 bytes, messages 0-1000 bytes)")
    print(f"signed requests through wrk: {counts}; kinds {dict(sorted(res.statuses.items()))}")
    n = max(1, res.completed)
    print(f"one signature (HMAC-SHA256 of a 120-byte order, key pads precomputed): {res.hmac_us} us in LuaJIT")
    cpu = res.cpu_s - (res.hmac_us or 0) * 20000 / 1e6  # without the 20,000 timed signatures
    print(f"wrk CPU: {cpu * 1e6 / n:.0f} us per request ({res.completed:,} requests in 2 s, 2 threads, "
          f"including the self-check server's answers being parsed)")
    kinds = {k.split(":")[0] for k in res.statuses}
    good = (vec_ok == len(expected) and counts["ok"] > 0 and sum(counts.values()) == counts["ok"]
            and kinds == {"maker", "taker", "rest", "cancel"} and res.ok == res.completed)
    print("self-check " + ("PASSED" if good else "FAILED"))
    return 0 if good else 1


# --- main ------------------------------------------------------------------------------------
def run(args: argparse.Namespace, wrk: str) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    tree, commit, dirty = ROOT, git(["rev-parse", "HEAD"]), bool(git(["status", "--porcelain", "--untracked-files=no"]))
    if args.ref:
        tree = Path(tempfile.mkdtemp(prefix="cx-bench-tree-")) / "tree"
        commit, dirty = export_ref(args.ref, tree), False
        print(f"measuring {args.ref} = {commit} (git archive into {tree}), not the working tree", flush=True)
    elif dirty:
        print(f"measuring the working tree: HEAD {commit} plus uncommitted changes", flush=True)
    stack: Stack | None = None
    ws: WsClients | None = None
    try:
        stack = Stack(tree, args.markets, args.redis_cluster)
        meta = run_meta(args, wrk, stack, commit, dirty)
        print(f"setup: {setup_line(meta)}", flush=True)
        print(f"starting the stack (python {' '.join(stack.argv[1:])}) in {stack.state} ...", flush=True)
        began = time.monotonic()
        stack.start()
        print(f"up after {time.monotonic() - began:.1f} s: API {stack.api}, WebSocket {stack.ws}", flush=True)
        procs = Procs(stack.proc.pid if stack.proc else 0, stack.state / "pg", args.redis_cluster)
        procs.discover()
        print("processes: " + ", ".join(f"{k}={v}" for k, v in procs.named.items()), flush=True)
        n_users = max(args.users, 2 * max(levels))
        bases = sorted({m["baseAsset"] for m in stack.specs if m["symbol"] in stack.traded})
        users = asyncio.run(fund_users(stack.api, n_users, bases))
        users_file = stack.base / "users.txt"
        users_file.write_text("".join(f"{k} {s}\n" for _, k, s in users))
        print(f"{len(users)} funded users (USDC, {', '.join(bases)}); each client uses {n_users}/clients of them "
              f"in turn", flush=True)
        ws = WsClients(stack.ws, args.ws_clients, users[0][1], users[0][2])
        results: list[dict[str, Any]] = []
        for _round in range(args.repeat):
            for clients in levels:
                r = level(args, wrk, stack, procs, ws, users_file, clients, stack.base, _round)
                results.append(r)
                print_level(r)
        return report(args, meta, results)
    finally:
        if ws is not None:
            ws.close()
        for p in list(RUNNING):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        if stack is not None:
            stack.stop()
        if tree != ROOT:
            shutil.rmtree(tree.parent, ignore_errors=True)


def run_meta(args: argparse.Namespace, wrk: str, stack: Stack, commit: str, dirty: bool) -> dict[str, Any]:
    return {
        "command": command_line(), "commit": commit, "dirty": dirty, "ref": args.ref,
        "generator": "python (bench/stack_pyload.py)" if wrk == "python" else "wrk + bench/wrk/orders.lua",
        "cpus": NCPU, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": {str(k): v for k, v in TARGETS.items()},
        "market_count": len(stack.specs), "markets": [m["symbol"] for m in stack.specs],
        "markets_traded": stack.traded, "markets_file": "generated (--markets)" if stack.markets_file
        else "markets.yaml", "redis_mode": stack.redis_mode,
    }


def report(args: argparse.Namespace, meta: dict[str, Any], results: list[dict[str, Any]]) -> int:
    """The summary, the comparison and the JSON; 2 when a level is refused."""
    print_summary(results, setup_line(meta))
    if args.compare:
        print_comparison(results, Path(args.compare))
    refused = [r["clients"] for r in results if r["ok_fraction"] < 0.99]
    meta["refused_levels"] = refused
    print(f"\ncommit {meta['commit']}{' (working tree modified)' if meta['dirty'] else ''}, {NCPU} CPUs, "
          f"load average now {os.getloadavg()[0]:.2f}")
    print(f"command: {meta['command']}")
    print(f"setup: {setup_line(meta)}")
    out = Path(args.json)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "levels": results,
                               "medians": {str(k): v for k, v in medians(results).items()}}, indent=1))
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if refused:
        print(f"REFUSED: levels {refused} had more than 1% of responses not 200/202; their figures "
              f"are not valid (see the status counts above)")
        return 2
    return 0


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_stack.py", *sys.argv[1:]])


def git(argv: list[str]) -> str:
    return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The full-stack benchmark of record (issue 12): `up --no-demo`, wrk at 1/8/64 clients, "
                    "WebSocket subscribers; orders/s, latency, CPU per order for every process, lags. "
                    "See docs/benchmarks.md, 'Full stack (issue 12)'.")
    parser.add_argument("--levels", default="1,8,64", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per level")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each level")
    parser.add_argument("--ws-clients", type=int, default=4, help="WebSocket clients (K)")
    parser.add_argument("--users", type=int, default=128, help="funded users shared out among the clients")
    parser.add_argument("--profile", action="store_true", help="py-spy flame graphs to artifacts/profiles/")
    parser.add_argument("--profile-level", type=int, default=8, help="the level (client count) to profile")
    parser.add_argument("--json", default="artifacts/bench_stack.json", help="where the results go")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over the levels (1,8,64,1,8,64,...): medians and ranges on a noisy machine")
    parser.add_argument("--compare", default="", help="an earlier --json file: print old -> new per level")
    parser.add_argument("--ref", default="", help="run the stack from this commit (git archive to /tmp) "
                        "instead of the working tree, e.g. HEAD while the tree is being edited")
    parser.add_argument("--generator", choices=("wrk", "python"), default="wrk",
                        help="wrk (default; installed with apt when missing) or the Python fallback")
    parser.add_argument("--self-check", action="store_true", help="check wrk's Lua HMAC and signing, then exit")
    parser.add_argument("--markets", type=int, default=0,
                        help="N > 0: a generated markets file of N markets (SOL/USDC, M1/USDC, ...; "
                        "CRYPTEX_MARKETS_FILE), orders spread evenly over all N; default: markets.yaml, "
                        "orders on SOL/USDC")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="`up --redis-cluster`: a local 3-primary + 3-replica Redis Cluster instead of one Redis")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    print("command: " + command_line(), flush=True)
    print(f"markets: {args.markets or 'markets.yaml (orders on ' + MARKET + ')'}; Redis: "
          f"{'cluster (3 primaries + 3 replicas)' if args.redis_cluster else 'single node'}", flush=True)

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    wrk = ensure_wrk() if args.generator == "wrk" else None
    if args.self_check:
        if wrk is None:
            sys.exit("--self-check needs wrk: apt-get install -y wrk")
        return self_check(wrk)
    if wrk is None:
        print("NOTE: wrk is not available (apt-get install -y wrk); falling back to the Python load "
              "generator (bench/stack_pyload.py), which takes 3-5x more CPU per order from the cores the "
              "servers share: these figures compare only with other Python-generator runs", flush=True)
        wrk = "python"
    if args.markets > 1 and wrk == "python":
        sys.exit("--markets N > 1 needs wrk (bench/stack_pyload.py trades on one market): apt-get install -y wrk")
    if not 0 <= args.markets <= 999:
        sys.exit("--markets: 1-999 (0: markets.yaml)")
    if args.profile and str(args.profile_level) not in args.levels.split(","):
        sys.exit(f"--profile-level {args.profile_level} is not one of --levels {args.levels}")
    try:
        return run(args, wrk)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}\n(everything started was stopped)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
