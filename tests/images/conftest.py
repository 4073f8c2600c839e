"""The image tier: the five images built with buildah (scripts/build-images.sh) and run with
podman, as root, on this machine.

Without buildah/podman the fixture runs scripts/install-container-tools.sh (apt); if they are
still missing, the tests skip with the reason, except in CI (CI=true), where that fails.
The build is cached: the base image is made once, and unchanged layers are reused.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from filelock import FileLock

from tests.images.podman import LABEL, ROOT, ci, missing_tools, podman

COMPONENTS = ("api", "engine", "wsgateway", "dbproc", "operator")
PREFIX = os.environ.get("CRYPTEX_IMAGE_PREFIX", "localhost/cryptex")
TAG = os.environ.get("CRYPTEX_IMAGE_TAG", "dev")
BUILD_TIMEOUT_S = 1500


@dataclass(frozen=True)
class Images:
    names: dict[str, str]
    build_seconds: float
    log: Path

    def __getitem__(self, component: str) -> str:
        return self.names[component]


@dataclass
class Report:
    build_seconds: float | None = None
    build_log: str = ""
    figures: dict[str, str] = field(default_factory=dict)


_report = Report()


def _unavailable(reason: str) -> None:
    if ci():
        pytest.fail(f"image tier cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def container_tools() -> None:
    if os.geteuid() != 0:
        _unavailable("the image tier needs root (rootful buildah/podman)")
    if missing_tools():
        subprocess.run([str(ROOT / "scripts" / "install-container-tools.sh")], check=False, timeout=900)
    if missing := missing_tools():
        _unavailable(f"{', '.join(missing)} not installed and scripts/install-container-tools.sh "
                     "could not install them (no apt?)")
    if not Path("/etc/containers/containers.conf").exists():
        _unavailable("/etc/containers/containers.conf is missing (scripts/install-container-tools.sh writes it)")


@pytest.fixture(scope="session")
def images(container_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    log = tmp_path_factory.mktemp("images") / "build-images.log"
    t0 = time.monotonic()
    # One build at a time on this machine (other checkouts and sessions build the same tags).
    with FileLock("/tmp/cryptex-build-images.lock"), log.open("w") as out:
        proc = subprocess.run([str(ROOT / "scripts" / "build-images.sh"), *COMPONENTS],
                              stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
                              check=False, env={**os.environ, "CRYPTEX_IMAGE_PREFIX": PREFIX,
                                                "CRYPTEX_IMAGE_TAG": TAG})
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"scripts/build-images.sh failed:\n{log.read_text()[-6000:]}"
    names = {c: f"{PREFIX}/{c}:{TAG}" for c in COMPONENTS}
    _report.build_seconds, _report.build_log = seconds, log.read_text()
    yield Images(names, seconds, log)
    # Containers a failed or interrupted test of this session may have left behind.
    left = podman("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if left:
        podman("rm", "-f", *left, check=False)


def record(key: str, value: str) -> None:
    """Figures for the terminal summary (time to ready per pod, ...)."""
    _report.figures[key] = value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _report.build_seconds is None and not _report.figures:
        return
    write = terminalreporter.write_line
    terminalreporter.section("cryptex images")
    if _report.build_seconds is not None:
        write(f"scripts/build-images.sh: {_report.build_seconds:.0f} s")
        for line in _report.build_log.splitlines():
            if line.startswith(("base ", "image ", *COMPONENTS)):
                write("  " + line)
    for key, value in _report.figures.items():
        write(f"  {key}: {value}")
