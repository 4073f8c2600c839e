"""Containers under rootful podman for the image tests: start, wait for HTTP, inspect, remove.

Every container these tests start is named `cryptex-test-<uuid>` and labelled
`cryptex.test=images-<session>`, and is removed (`podman rm -f`) when its test ends; at the
end of the session, whatever this session left is removed (never another session's: other
checkouts may run the tier at the same time).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("buildah", "podman", "runc", "slirp4netns", "debootstrap")
SESSION = uuid.uuid4().hex[:12]
LABEL = f"cryptex.test=images-{SESSION}"
# What the chart (and any sane cluster) runs with: read-only root, no capabilities,
# no privilege escalation, a numeric non-root user.
HARDENED = ("--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges",
            "--user=10001:10001")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


@dataclass
class Container:
    name: str
    image: str
    started: float = field(default_factory=time.monotonic)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return proc.stdout.strip() == "true"

    def main_pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout)

    def uids(self) -> tuple[int, int]:
        """Real and effective uid of the container's main process, read from the host's /proc."""
        status = Path(f"/proc/{self.main_pid()}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        real, effective, *_ = (int(v) for v in uid_line.split()[1:])
        return real, effective

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *argv, check=False)

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False, timeout=60)


def run(image: str, *, env: Mapping[str, str] | None = None, args: Sequence[str] = (),
        options: Sequence[str] = ("--network=host", *HARDENED), entrypoint: Sequence[str] | None = None,
        name: str | None = None) -> Container:
    """`podman run -d` with the hardened defaults; the caller removes it (see `started`)."""
    name = name or f"cryptex-test-{uuid.uuid4().hex[:10]}"
    argv = ["run", "-d", "--name", name, "--label", LABEL, *options]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    if entrypoint is not None:
        argv += ["--entrypoint", json.dumps(list(entrypoint))]
    podman(*argv, image, *args)
    return Container(name, image)


@contextlib.contextmanager
def started(image: str, **kw: object) -> Iterator[Container]:
    container = run(image, **kw)  # type: ignore[arg-type]
    try:
        yield container
    finally:
        container.remove()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def wait_http(container: Container, url: str, status: int = 200, timeout: float = 60.0) -> float:
    """Poll `url` until it answers `status`; returns the seconds since the container started.
    Fails early, with the container's logs, when the container exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            code, body = http_get(url)
            if code == status:
                return time.monotonic() - container.started
            last = f"{code} {body[:300]}"
        except (OSError, urllib.error.URLError) as err:
            last = repr(err)
        if not container.running():
            raise AssertionError(f"{container.image} exited before {url} answered:\n{container.logs()}")
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer {status} in {timeout}s (last: {last}):\n{container.logs()}")


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)


def ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
