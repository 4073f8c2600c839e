"""Run the whole exchange on one machine: its own Redis and PostgreSQL when no URL is
configured, then every service as its own process. Used by `./cryptex up` and by the
end-to-end and chaos tests (which point it at servers on free ports).

Each service process gets its settings through CRYPTEX_* environment variables and writes
JSON logs to `<state dir>/logs/<name>.log`; ops ports are written to
`<state dir>/ports/<name>.port` for the local Prometheus.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptex_common.markets import MarketSpec, market_tag
from cryptex_launcher.ports import (  # re-exported: the launcher's callers import them from here
    PORTS_FROM,
    free_port,
    free_port_pair,
    port_in_use,
    wait_for_port,
)

__all__ = ["PORTS_FROM", "Stack", "StartError", "free_port", "free_port_pair", "port_in_use", "wait_for_port"]

def pg_bin(name: str) -> str:
    """A PostgreSQL server binary (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"{name} not found: install PostgreSQL (apt-get install -y postgresql)")
    return path


def as_postgres(args: list[str]) -> list[str]:
    """initdb/pg_ctl refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class StartError(RuntimeError):
    """A server or service did not start; the message says why (and shows its log's tail)."""


def log_tail(path: Path, lines: int = 5) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after timeout_s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_local_redis(state_dir: Path, port: int, timeout_s: float = 300.0) -> subprocess.Popen[bytes]:
    """Redis with AOF (appendfsync everysec): see docs/durability.md for what that keeps.
    Returns once it has loaded its data (a big AOF takes a while); on failure it is stopped.
    Its own session: Ctrl-C reaches the launcher, which stops Redis after the services."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: install it (apt-get install -y redis-server)")
    data = state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
         "--logfile", str(data / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_redis_loaded(f"redis://127.0.0.1:{port}/0", timeout_s, proc, data / "redis.log")
    except BaseException:
        stop_process(proc)
        raise
    return proc


def wait_redis_loaded(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                      log: Path | None = None) -> None:
    """Until Redis answers INFO with loading:0 (it answers LOADING to most commands while it
    reads its AOF). With `proc`, the Redis answering must be that process."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + timeout_s
    shown = time.monotonic()
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                raise StartError(f"redis-server exited with {proc.returncode} at start; "
                                 f"{log}:\n{log_tail(log) if log else ''}")
            info: dict = {}
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                info = client.info()
            if info and proc is not None and int(info["process_id"]) != proc.pid:
                raise StartError(f"{url} is answered by another Redis (pid {info['process_id']})")
            if info and not int(info["loading"]):
                return
            if time.monotonic() > deadline:
                state = (f"still loading its data ({info.get('loading_loaded_perc', '?')}% done)" if info
                         else "not answering")
                raise StartError(f"Redis at {url} {state} after {timeout_s}s; "
                                 f"set CRYPTEX_START_TIMEOUT_S to wait longer")
            if info and time.monotonic() - shown > 5:
                shown = time.monotonic()
                print(f"Redis is loading its data: {info.get('loading_loaded_perc', '?')}%", file=sys.stderr)
            time.sleep(0.05)
    finally:
        client.close()


def start_local_postgres(state_dir: Path, port: int, timeout_s: float = 300.0) -> Path:
    """initdb once under .cryptex/pg, then pg_ctl start (as user postgres when root).
    Returns once a real connection works; on failure the server is stopped."""
    data = state_dir / "pg"
    if os.geteuid() == 0:  # the parents must be traversable by the postgres user
        for parent in [state_dir, *state_dir.parents]:
            with contextlib.suppress(PermissionError):
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
            os.chmod(data, 0o700)
        subprocess.run(as_postgres([pg_bin("initdb"), "-D", str(data), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True)
    running = postmaster_pid(data)
    if running:
        raise StartError(f"a PostgreSQL (pid {running}) already runs on {data}: stop it first "
                         f"({pg_bin('pg_ctl')} -D {data} stop)")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data}"
    try:  # nothing else runs on this data dir (checked above): whatever runs there now is ours
        started = subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l",
                                              str(data / "log"), "-w", "-t", str(max(1, int(timeout_s))), "start"]),
                                 capture_output=True, text=True, start_new_session=True)
        if started.returncode != 0:
            raise StartError(f"PostgreSQL did not start on port {port} ({started.stdout.strip()} "
                             f"{started.stderr.strip()}); {data / 'log'}:\n{log_tail(data / 'log')}")
        subprocess.run(as_postgres([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                     "postgres", "cryptex"]), check=False, capture_output=True)
        wait_postgres_ready(f"postgresql://postgres@127.0.0.1:{port}/cryptex", data, timeout_s)
    except BaseException:
        stop_local_postgres(data)
        raise
    return data


def postmaster_pid(data: Path) -> int | None:
    """The pid of a live postmaster on this data dir, from its postmaster.pid."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm.startswith("postgres") else None


def wait_postgres_ready(url: str, data: Path, timeout_s: float) -> None:
    """Until a real connection to `url` works and the server answering runs on `data`."""
    import asyncio

    import asyncpg

    async def data_directory() -> str:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return str(await conn.fetchval("SHOW data_directory"))
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = asyncio.run(data_directory())
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise StartError(f"PostgreSQL at {url} not accepting connections after {timeout_s}s: "
                                 f"{exc}") from exc
            time.sleep(0.2)
            continue
        if Path(found).resolve() != data.resolve():
            raise StartError(f"{url} is answered by another PostgreSQL (data in {found})")
        return


def stop_local_postgres(data: Path) -> None:
    subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                   check=False, capture_output=True)


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    ops_port: int | None = None
    http_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass
class Stack:
    """A set of service processes sharing one Redis and one PostgreSQL."""

    redis_url: str
    database_url: str
    markets: list[MarketSpec]
    state_dir: Path
    admin_token: str = "dev-admin-token"
    api_port: int = 8080
    ws_port: int = 8081
    with_wsgateway: bool = True
    with_dbproc: bool = True
    with_demo: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def _env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEX_")}
        env.update({
            "CRYPTEX_REDIS_URL": self.redis_url,
            "CRYPTEX_DATABASE_URL": self.database_url,
            "CRYPTEX_ADMIN_TOKEN": self.admin_token,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        env.update(more)
        return env

    def plan(self) -> None:
        py = sys.executable
        api_ops_port = free_port()  # /metrics is served there, never on the API port
        self.services["api"] = Service(
            "api", [py, "-m", "cryptex_api"],
            self._env(CRYPTEX_PORT=str(self.api_port), CRYPTEX_INSTANCE_ID="api-1",
                      CRYPTEX_OPS_PORT=str(api_ops_port)),
            ops_port=api_ops_port, http_port=self.api_port,
        )
        for spec in self.markets:
            name = f"engine-{market_tag(spec.symbol)}"
            port = free_port()
            self.services[name] = Service(
                name, [py, "-m", "cryptex_engine", "--market", spec.symbol],
                self._env(CRYPTEX_OPS_PORT=str(port), CRYPTEX_INSTANCE_ID=name), ops_port=port,
            )
        if self.with_wsgateway and _importable("cryptex_wsgateway.__main__"):
            ws_ops_port = free_port()  # /metrics is served there, never on the WebSocket port
            self.services["wsgateway"] = Service(
                "wsgateway", [py, "-m", "cryptex_wsgateway"],
                self._env(CRYPTEX_PORT=str(self.ws_port), CRYPTEX_INSTANCE_ID="ws-1",
                          CRYPTEX_OPS_PORT=str(ws_ops_port)),
                ops_port=ws_ops_port, http_port=self.ws_port,
            )
        if self.with_dbproc and _importable("cryptex_dbproc.__main__"):
            port = free_port()
            self.services["dbproc"] = Service(
                "dbproc", [py, "-m", "cryptex_dbproc"],
                self._env(CRYPTEX_OPS_PORT=str(port), CRYPTEX_INSTANCE_ID="dbproc-1"), ops_port=port,
            )
        if self.with_demo:
            self.services["demo"] = Service(
                "demo", [py, "-m", "cryptex_launcher", "demo",
                         "--api", f"http://127.0.0.1:{self.api_port}"],
                self._env(),
            )

    def start(self, name: str) -> Service:
        svc = self.services[name]
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child process
        svc.process = subprocess.Popen(svc.argv, env=svc.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        out.close()
        ports = self.state_dir / "ports"
        ports.mkdir(parents=True, exist_ok=True)
        port = svc.ops_port or svc.http_port
        if port:
            (ports / f"{name}.port").write_text(str(port))
        return svc

    def fixed_ports(self) -> dict[str, int]:
        """Every port the planned services will listen on, by service name."""
        ports: dict[str, int] = {}
        for name, svc in self.services.items():
            if svc.http_port:
                ports[name] = svc.http_port
            if svc.ops_port:
                ports[f"{name} ops"] = svc.ops_port
        return ports

    def start_all(self, wait: bool = True, timeout_s: float = 30.0) -> None:
        """Start every service; with `wait`, until each listens. If one exits or does not
        listen in time, every service started is stopped and StartError raised."""
        if not self.services:
            self.plan()
        try:
            for name in self.services:
                if name != "demo":
                    self.start(name)
            if wait:
                for name in self.services:
                    self._wait_listening(name, timeout_s)
            if "demo" in self.services:
                self.start("demo")
        except BaseException:
            self.stop_all()
            raise

    def _wait_listening(self, name: str, timeout_s: float) -> None:
        svc = self.services[name]
        port = svc.http_port or svc.ops_port
        deadline = time.monotonic() + timeout_s
        while port:
            if svc.process and svc.process.poll() is not None:
                log = self.state_dir / "logs" / f"{name}.log"
                raise StartError(f"{name} exited with {svc.process.returncode} at start; {log}:\n{log_tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
            if time.monotonic() > deadline:
                raise StartError(f"{name}: nothing listening on 127.0.0.1:{port} after {timeout_s}s")
            time.sleep(0.05)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        svc = self.services[name]
        if svc.process and svc.process.poll() is None:
            svc.process.send_signal(sig)
            svc.process.wait(30)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.services[name].restarts += 1
        self.start(name)

    def stop_all(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM everything (demo first, then api, then the rest); SIGKILL stragglers."""
        order = sorted(self.services, key=lambda n: {"demo": 0, "api": 1, "wsgateway": 2}.get(n, 3))
        demo = self.services.get("demo")
        if demo and demo.process and demo.process.poll() is None:
            # the demo first, alone: it cancels its quotes through the still-running API
            demo.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                demo.process.wait(min(5.0, timeout_s / 2))
        for name in order:
            p = self.services[name].process
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name in order:
            p = self.services[name].process
            if p is None:
                continue
            try:
                codes[name] = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
        return codes

    def log_text(self, name: str) -> str:
        path = self.state_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
