"""Second half of "every query names a metric the services export": a real Prometheus
(Debian package) scrapes real exporters, and every metric named by a rule or a dashboard
must return data.

What is here
- `start_prometheus(targets)`: a real Prometheus on 127.0.0.1:<free port>, scraping the
  given {job: ["host:port", ...]} every second, with the Cryptex rules loaded.
- `assert_metrics_have_data(url, names)`: polls the HTTP API until each series name has
  data *from the job that owns it* (see METRIC_OWNERS), or fails listing what is missing.
- `assert_json_log_lines(lines)`: every line is one JSON object with the required fields.
- Self-tests of those helpers against an in-process prometheus_client exporter, and of
  scripts/local-prometheus.sh end to end (these run today).
- `test_running_services_export_every_referenced_metric`: starts the real services via the
  launcher (`./cryptex`), drives orders, and runs the assertion above on every referenced
  metric, then checks every service's log file is JSON lines. >>> LEAD: `drive_orders` is
  the hook to write; then set SERVICES_E2E_WIRED = True. Until then the test starts
  nothing, skips locally and fails under CI=true. <<<
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, start_http_server

from tests.observability.exprs import (
    BUILTIN_SERIES,
    REPO,
    exported_series_names,
    in_ci,
    prometheus_binary,
    referenced_series,
    rule_files,
)
from tests.support.servers import free_port, wait_for_port

# --- helpers (reusable by any test) -----------------------------------------------------

# Which scrape job must export each series family. Every process imports the one metrics
# module, so a label-less metric appears at 0 in every job; checking the owner is what
# proves the right service exports it. First match wins.
METRIC_OWNERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cryptex_http_", ("api",)),
    ("cryptex_orders_accepted", ("api",)),
    ("cryptex_orders_rejected", ("api", "engine")),
    ("cryptex_order_", ("api",)),
    ("cryptex_engine_", ("engine",)),
    ("cryptex_trade", ("engine",)),
    ("cryptex_redis_used_memory", ("engine",)),
    ("cryptex_redis_maxmemory", ("engine",)),
    ("cryptex_ws_", ("wsgateway",)),
    ("cryptex_dbproc_", ("dbproc",)),
    ("cryptex_redis_errors", ("api", "engine", "wsgateway", "dbproc")),
    ("cryptex_postgres_errors", ("api", "dbproc")),
)


def owners(series: str) -> tuple[str, ...]:
    for prefix, jobs in METRIC_OWNERS:
        if series.startswith(prefix):
            return jobs
    return ()


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    dir: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as resp:
            return json.load(resp)


@contextlib.contextmanager
def start_prometheus(targets: Mapping[str, Sequence[str]],
                     rules: Iterable[Path] | None = None,
                     interval: str = "1s") -> Iterator[Prometheus]:
    """A real Prometheus on a free loopback port scraping `targets` ({job: [host:port]}).
    Stopped (by its PID) and its data removed on exit."""
    binary = prometheus_binary()
    workdir = Path(tempfile.mkdtemp(prefix="cryptex-prometheus-"))
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in (rule_files() if rules is None else rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addrs)}]}
            for job, addrs in targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, workdir)
    try:
        _wait_ready(prom)
        yield prom
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(prom: Prometheus, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if prom.process.poll() is not None:
            raise RuntimeError((prom.dir / "prometheus.log").read_text()[-2000:])
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"Prometheus not ready after {timeout_s}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def missing_metrics(prom: Prometheus, names: Iterable[str],
                    nonzero: Iterable[str] = ()) -> dict[str, str]:
    """Series name -> why it is missing (empty when every name has data)."""
    nonzero = set(nonzero)
    missing: dict[str, str] = {}
    for name in sorted(set(names)):
        jobs = owners(name)
        selector = f'{{__name__="{name}"'
        selector += f', job=~"{"|".join(jobs)}"}}' if jobs else "}"
        result = prom.query(f"count({selector})")
        if not result:
            missing[name] = f"no series matching {selector}"
        elif name in nonzero and not prom.query(f"{selector} > 0"):
            missing[name] = f"only zero values for {selector}"
    return missing


def assert_metrics_have_data(prom: Prometheus, names: Iterable[str], timeout_s: float = 30.0,
                             nonzero: Iterable[str] = ()) -> None:
    """Poll until every series name returns data from its owning job; fail with the list."""
    names = set(names)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = missing_metrics(prom, names, nonzero)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not missing, "metrics without data in Prometheus:\n" + "\n".join(
        f"  {name}: {why}" for name, why in missing.items())


def referenced_metric_names() -> set[str]:
    """Every raw series a rule or dashboard query reads (recording-rule outputs excluded:
    Prometheus computes those; ALERTS exists only while an alert is pending/firing)."""
    exported = exported_series_names()
    return {n for n in referenced_series() if n in exported or n == "up"}


REQUIRED_LOG_FIELDS = ("ts", "level", "service", "msg")


def assert_json_log_lines(lines: Iterable[str], service: str | None = None) -> int:
    """Every non-empty line is one JSON object with ts, level, service, msg (and the
    service's name when given). Returns the number of lines checked."""
    count = 0
    for raw in lines:
        if not raw.strip():
            continue
        entry = json.loads(raw)
        assert isinstance(entry, dict), raw
        for field in REQUIRED_LOG_FIELDS:
            assert field in entry, f"log line without {field!r}: {raw}"
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, raw
        if service is not None:
            assert entry["service"] == service, raw
        count += 1
    return count


# --- self-tests of the helpers (run today) --------------------------------------------------

@pytest.fixture
def exporter() -> Iterator[int]:
    """This process's prometheus_client registry (all of cryptex_common.metrics) served on
    a free port, like any Cryptex service's /metrics."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    try:
        wait_for_port(port)
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_prometheus_scrapes_an_exporter_and_the_helper_finds_what_is_missing(
        exporter: int) -> None:
    from cryptex_common import metrics

    metrics.ORDERS_ACCEPTED.labels(market="OBS/TEST").inc(3)
    metrics.ENGINE_COMMANDS.labels(market="OBS/TEST", type="place").inc(3)
    metrics.ORDER_ROUNDTRIP.labels(market="OBS/TEST").observe(0.003)
    metrics.REDIS_USED_MEMORY.set(123)
    target = f"127.0.0.1:{exporter}"
    with start_prometheus({"api": [target], "engine": [target]}) as prom:
        assert_metrics_have_data(
            prom,
            ["up", "cryptex_orders_accepted_total", "cryptex_engine_commands_total",
             "cryptex_order_roundtrip_seconds_bucket", "cryptex_redis_used_memory_bytes"],
            nonzero=["cryptex_redis_used_memory_bytes"])
        # A labelled metric never touched has no series; a metric exported only by the
        # wrong job does not count.
        missing = missing_metrics(prom, ["cryptex_engine_fenced_total", "cryptex_ws_connections"])
        assert set(missing) == {"cryptex_engine_fenced_total", "cryptex_ws_connections"}
        # The real server loaded every rule, and a recording rule evaluates on scraped data.
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        loaded = sum(len(g["rules"]) for g in groups)
        expected = sum(len(g["rules"]) for p in rule_files()
                       for g in yaml.safe_load(p.read_text())["groups"])
        assert loaded == expected
        deadline = time.monotonic() + 20
        while not prom.query('market:cryptex_engine_commands:rate5m{market="OBS/TEST"}'):
            assert time.monotonic() < deadline, "recording rule never produced a sample"
            time.sleep(0.5)


def test_local_prometheus_script_runs_a_real_prometheus(exporter: int, tmp_path: Path) -> None:
    prometheus_binary()
    state = tmp_path / "state"
    (state / "ports").mkdir(parents=True)
    (state / "ports" / "engine-SOL_USDC.port").write_text(f"{exporter}\n")
    port = free_port()
    env = {**os.environ, "CRYPTEX_STATE_DIR": str(state),
           "CRYPTEX_API_TARGET": f"127.0.0.1:{exporter}", "PROMETHEUS_LISTEN": f"127.0.0.1:{port}"}
    log = (tmp_path / "script.log").open("wb")
    proc = subprocess.Popen([str(REPO / "scripts" / "local-prometheus.sh")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, tmp_path)
    try:
        _wait_ready(prom)
        deadline = time.monotonic() + 30
        while True:
            up = {(r["metric"]["job"], r["metric"].get("process", "")): r["value"][1]
                  for r in prom.query("up")}
            if up.get(("engine", "engine-SOL_USDC")) == "1" and up.get(("api", "")) == "1":
                break
            assert time.monotonic() < deadline, f"targets never up: {up}"
            time.sleep(0.5)
        assert (state / "prometheus" / "data").is_dir()
    finally:
        # The script exec'd Prometheus in its own session; its target refresher is in the
        # same process group. Stop exactly that group (started here), then wait.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_json_log_helper_on_the_real_formatter() -> None:
    import io
    import logging

    from cryptex_common.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("api"))
    logger = logging.getLogger("cryptex.test.observability")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("order rejected", extra={"market": "SOL/USDC", "correlationId": "c1"})
        logger.error("boom")
    finally:
        logger.removeHandler(handler)
    assert assert_json_log_lines(stream.getvalue().splitlines(), service="api") == 2
    with pytest.raises(AssertionError):
        assert_json_log_lines(['{"level": "info", "msg": "no ts"}'])


# --- the real services (LEAD: wire here) ----------------------------------------------------

# >>> LEAD: set to True once drive_orders() is written and every service exists. Until then
# the test starts nothing (it would launch a whole exchange on a shared machine for no
# verdict); it skips locally and FAILS under CI=true so it cannot be forgotten. <<<
SERVICES_E2E_WIRED = False


def read_port_targets(ports_dir: Path) -> dict[str, list[str]]:
    """{job: [127.0.0.1:port]} from the launcher's <state>/ports/<name>.port files
    (api.port, wsgateway.port, engine-SOL_USDC.port -> job engine, dbproc.port)."""
    targets: dict[str, list[str]] = {}
    for path in sorted(ports_dir.glob("*.port")):
        job = path.stem.split("-", 1)[0]
        targets.setdefault(job, []).append(f"127.0.0.1:{int(path.read_text().strip())}")
    return targets


@contextlib.contextmanager
def start_services(redis_url: str, database_url: str,
                   state_dir: Path) -> Iterator[dict[str, list[str]]]:
    """Every service as its own process via the launcher's Stack (what `./cryptex up` runs),
    on free ports, against the test session's real Redis and PostgreSQL. Yields the scrape
    targets; stops every process on exit. >>> LEAD: adjust if the launcher API changes. <<<"""
    import asyncio

    from cryptex_launcher.__main__ import _markets_file, register_markets
    from cryptex_launcher.stack import Stack

    specs = asyncio.run(register_markets(redis_url, _markets_file()))
    stack = Stack(redis_url=redis_url, database_url=database_url, markets=specs,
                  state_dir=state_dir, api_port=free_port(), ws_port=free_port())
    stack.plan()
    try:
        stack.start_all(wait=True)
        yield read_port_targets(state_dir / "ports")
    finally:
        stack.stop_all()


def drive_orders(targets: Mapping[str, Sequence[str]]) -> None:
    """>>> LEAD: drive enough traffic that every referenced metric gets a sample. <<<
    Needed (with cryptex_client, API at targets["api"][0]): create two users and fund them;
    place crossing limit orders on every market (orders, round trips, commands, trades,
    volume, book gauges, batches); one rejected order (e.g. an off-tick price) for
    cryptex_orders_rejected_total; a cancel; open a WebSocket on targets["wsgateway"][0] and
    subscribe to depth/trades (connections, subscriptions, messages, fan-out delay); wait
    until dbproc has written the trades (rows, batch time, lag).
    Counters that only move on faults (fenced, dead letters, slow clients dropped,
    resnapshots, reply timeouts, redis/postgres errors) must be exported at 0 by each
    service at start: call `.labels(market=...)` / `.labels(service=...)` once per label
    value so the series exist before the first fault."""
    raise NotImplementedError("drive_orders is not written yet")


# Series that must be > 0 after drive_orders (a gauge left at 0 means nobody sets it).
NONZERO_AFTER_DRIVE = {
    "cryptex_orders_accepted_total", "cryptex_engine_commands_total", "cryptex_trades_total",
    "cryptex_trade_volume_quote_total", "cryptex_redis_used_memory_bytes",
    "cryptex_dbproc_rows_written_total", "cryptex_ws_messages_sent_total",
}


@pytest.mark.slow
@pytest.mark.skipif(not SERVICES_E2E_WIRED and not in_ci(),
                    reason="LEAD: the services e2e test is not wired yet (SERVICES_E2E_WIRED)")
def test_running_services_export_every_referenced_metric(
        redis_srv: Any, postgres: Any, tmp_path: Path) -> None:
    if not SERVICES_E2E_WIRED:
        message = ("LEAD: the services e2e test is not wired yet (SERVICES_E2E_WIRED = False "
                   "in tests/observability/test_scrape_e2e.py)")
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    names = referenced_metric_names()
    assert names - {"up"} and not (names & (BUILTIN_SERIES - {"up"}))
    state = tmp_path / "state"
    with start_services(redis_srv.url, postgres.url, state) as targets:
        assert set(targets) >= {"api", "wsgateway", "engine", "dbproc"}, targets
        with start_prometheus(targets) as prom:
            drive_orders(targets)
            assert_metrics_have_data(prom, names, timeout_s=60, nonzero=NONZERO_AFTER_DRIVE)
            down = prom.query("up == 0")
            assert not down, down
    logs = sorted((state / "logs").glob("*.log"))
    assert logs, f"no service logs under {state / 'logs'}"
    for path in logs:
        assert assert_json_log_lines(path.read_text().splitlines()) > 0, path
