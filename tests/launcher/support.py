"""Run `./cryptex up` as a real process on free ports with its own state dir, and find the
processes it started (by pid, through /proc) so a test can prove none is left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptex_launcher.processes import stack_processes
from cryptex_launcher.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "launcher-test-token"
UP_LINE = "Cryptex is up"


@dataclass
class UpEnv:
    """The environment of one local stack: its state dir and its four fixed ports."""

    state: Path
    redis_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    ws_port: int = field(default_factory=free_port)
    more: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEX_")}
        env.update({
            "CRYPTEX_STATE_DIR": str(self.state), "CRYPTEX_LOCAL_REDIS_PORT": str(self.redis_port),
            "CRYPTEX_LOCAL_PG_PORT": str(self.pg_port), "CRYPTEX_API_PORT": str(self.api_port),
            "CRYPTEX_WS_PORT": str(self.ws_port), "CRYPTEX_ADMIN_TOKEN": ADMIN, "PYTHONUNBUFFERED": "1",
        })
        env.update(self.more)
        return env

    def with_more(self, **more: str) -> UpEnv:
        """The same stack with more CRYPTEX_* variables."""
        return UpEnv(self.state, self.redis_port, self.pg_port, self.api_port, self.ws_port,
                     {**self.more, **more})

    @property
    def ports(self) -> list[int]:
        return [self.redis_port, self.pg_port, self.api_port, self.ws_port]

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass
class Up:
    """A running `./cryptex up`: its process and every line it printed so far."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self, timeout_s: float) -> float:
        """Seconds until it printed 'Cryptex is up'; fails with its output if it exited first."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if any(line.startswith(UP_LINE) for line in self.lines):
                return time.monotonic() - start
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader thread take the last lines
                raise AssertionError(f"up exited with {self.process.returncode}:\n{self.output}")
            time.sleep(0.1)
        raise AssertionError(f"up not up after {timeout_s}s:\n{self.output}")

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"up still running after {timeout_s}s:\n{self.output}") from None

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
        """Ctrl-C (or `sig`), as a user would."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait_exit(timeout_s)

    def exit_codes(self) -> str:
        """The services' exit codes `up` printed when it stopped them."""
        return "".join(line for line in self.lines if line.startswith("exit codes:"))


def start_up(env: UpEnv, *args: str) -> Up:
    proc = subprocess.Popen([str(ROOT / "cryptex"), "up", "--no-demo", *args], env=env.env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    up = Up(proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            up.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return up


def new_state_dir() -> Path:
    """A state dir directly under /tmp (short enough for PostgreSQL's socket path)."""
    return Path(tempfile.mkdtemp(prefix="cryptex-up-")) / "state"


def stack_pids(env: UpEnv) -> dict[int, str]:
    """Every live process of this stack (cryptex_launcher.processes)."""
    return stack_processes(env.state, env.redis_port)


def server_pids(env: UpEnv) -> dict[int, str]:
    """The redis-server and postgres processes among them."""
    return {pid: cmd for pid, cmd in stack_pids(env).items() if "redis-server" in cmd or "postgres" in cmd}


def kill_stack(env: UpEnv) -> None:
    """Clean-up after a test: stop whatever this stack left running, by pid."""
    pids = stack_pids(env)
    for pid, cmd in pids.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT if "postgres" in cmd else signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def remove_state(env: UpEnv) -> None:
    kill_stack(env)
    shutil.rmtree(env.state.parent, ignore_errors=True)


def ready_status(env: UpEnv) -> int:
    """The API's GET /readyz status (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"{env.api_url}/readyz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
