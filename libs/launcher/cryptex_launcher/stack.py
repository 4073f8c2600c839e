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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


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


def start_local_redis(state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Redis with AOF (appendfsync everysec): see docs/durability.md for what that keeps."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: install it (apt-get install -y redis-server)")
    data = state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
         "--logfile", str(data / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc


def start_local_postgres(state_dir: Path, port: int) -> Path:
    """initdb once under .cryptex/pg, then pg_ctl start (as user postgres when root)."""
    data = state_dir / "pg"
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
            os.chmod(data, 0o700)
        subprocess.run(as_postgres([pg_bin("initdb"), "-D", str(data), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True)
    if os.geteuid() == 0:  # the parent must be traversable by the postgres user
        for parent in [state_dir, *state_dir.parents]:
            with contextlib.suppress(PermissionError):
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data}"
    subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l",
                                 str(data / "log"), "-w", "start"]), check=True, capture_output=True)
    subprocess.run(as_postgres([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                 "postgres", "cryptex"]), check=False, capture_output=True)
    return data


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
        self.services["api"] = Service(
            "api", [py, "-m", "cryptex_api"],
            self._env(CRYPTEX_PORT=str(self.api_port), CRYPTEX_INSTANCE_ID="api-1"),
            http_port=self.api_port,
        )
        for spec in self.markets:
            name = f"engine-{market_tag(spec.symbol)}"
            port = free_port()
            self.services[name] = Service(
                name, [py, "-m", "cryptex_engine", "--market", spec.symbol],
                self._env(CRYPTEX_OPS_PORT=str(port), CRYPTEX_INSTANCE_ID=name), ops_port=port,
            )
        if self.with_wsgateway and _importable("cryptex_wsgateway.__main__"):
            self.services["wsgateway"] = Service(
                "wsgateway", [py, "-m", "cryptex_wsgateway"],
                self._env(CRYPTEX_PORT=str(self.ws_port), CRYPTEX_INSTANCE_ID="ws-1"),
                http_port=self.ws_port,
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

    def start_all(self, wait: bool = True) -> None:
        if not self.services:
            self.plan()
        for name in self.services:
            if name != "demo":
                self.start(name)
        if wait:
            for svc in self.services.values():
                port = svc.http_port or svc.ops_port
                if port:
                    wait_for_port(port)
        if "demo" in self.services:
            self.start("demo")

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
