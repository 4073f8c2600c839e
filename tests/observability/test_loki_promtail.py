"""Loki and Promtail configuration. No Loki or Promtail binary exists for these machines
(not on apt, PyPI or npm), so:
- Promtail's relabel_configs (Prometheus's own relabelling) go through `promtool check
  config`, with kubernetes_sd_configs swapped for a static target (Debian's Prometheus has no
  Kubernetes SD) and the SD role checked here;
- the pipeline is checked against a real log line from cryptex_common.logs.JsonFormatter;
- Loki's file gets structural asserts only.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import yaml

from tests.observability.exprs import MONITORING, run_promtool

PROMTAIL = MONITORING / "promtail" / "promtail.yaml"
LOKI = MONITORING / "loki" / "loki.yaml"
LABELS = {"service", "level", "market"}


def _promtail() -> dict:
    return yaml.safe_load(PROMTAIL.read_text())


def _as_prometheus_config(job: dict) -> dict:
    sd = job["kubernetes_sd_configs"]
    assert [c["role"] for c in sd] == ["pod"]
    return {"scrape_configs": [{
        "job_name": job["job_name"],
        "static_configs": [{"targets": ["127.0.0.1:1"]}],
        "relabel_configs": job["relabel_configs"],
    }]}


def test_promtail_relabel_configs_pass_promtool(tmp_path: Path) -> None:
    for job in _promtail()["scrape_configs"]:
        path = tmp_path / f"{job['job_name']}.yml"
        path.write_text(yaml.safe_dump(_as_prometheus_config(job)))
        proc = run_promtool("check", "config", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_relabel_check_catches_a_bad_action(tmp_path: Path) -> None:
    job = _promtail()["scrape_configs"][0]
    job["relabel_configs"][0]["action"] = "keeep"
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(_as_prometheus_config(job)))
    proc = run_promtool("check", "config", str(path))
    assert proc.returncode != 0
    assert "keeep" in proc.stdout + proc.stderr


def _stages(job: dict) -> dict[str, object]:
    out: dict[str, object] = {}
    for stage in job["pipeline_stages"]:
        [(kind, conf)] = stage.items()
        out[kind] = conf
    return out


def test_promtail_keeps_only_few_labels() -> None:
    config = _promtail()
    assert config["clients"] and config["clients"][0]["url"].endswith("/loki/api/v1/push")
    for job in config["scrape_configs"]:
        stages = _stages(job)
        assert next(iter(stages)) == "cri"
        assert set(stages["labels"]) == LABELS  # type: ignore[arg-type]
        assert set(stages["labelallow"]) == LABELS  # type: ignore[arg-type]
        assert list(stages)[-1] == "labelallow"
        # Ids are never labels.
        assert {"orderId", "correlationId"} <= set(stages["structured_metadata"])  # type: ignore[arg-type]
        targets = {r.get("target_label") for r in job["relabel_configs"]}
        assert targets - {None, "__path__"} <= LABELS


def test_promtail_pipeline_matches_real_log_lines() -> None:
    """The json stage's expressions name the fields JsonFormatter really writes, and the
    timestamp it writes parses as RFC 3339 (what the timestamp stage expects)."""
    from cryptex_common.logs import JsonFormatter

    record = logging.LogRecord("cryptex.engine", logging.WARNING, __file__, 1,
                               "order rejected", (), None)
    record.market = "SOL/USDC"
    record.orderId = "42"
    record.correlationId = "c-1"
    line = json.loads(JsonFormatter("engine").format(record))

    stages = _stages(_promtail()["scrape_configs"][0])
    expressions = stages["json"]["expressions"]  # type: ignore[index]
    for key, source in expressions.items():
        assert source in line, f"json stage extracts {key} from {source!r}, not in {line}"
    assert line["level"] == "warning" and line["service"] == "engine"
    assert stages["timestamp"]["source"] == "ts"  # type: ignore[index]
    assert stages["timestamp"]["format"] == "RFC3339Nano"  # type: ignore[index]
    assert datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).tzinfo is not None


def test_loki_config_structure() -> None:
    config = yaml.safe_load(LOKI.read_text())
    assert config["auth_enabled"] is False
    assert config["server"]["http_listen_port"] == 3100
    [schema] = config["schema_config"]["configs"]
    assert schema["schema"] == "v13" and schema["store"] == "tsdb"
    limits = config["limits_config"]
    assert limits["allow_structured_metadata"] is True  # Promtail sends ids this way
    assert limits["max_label_names_per_series"] <= 5
    assert limits["discover_service_name"] == []
    assert "3100" in _promtail()["clients"][0]["url"]


def test_log_timestamps_are_utc_milliseconds_across_seconds() -> None:
    """The formatter reuses a second's text while records stay in that second: every record
    still carries its own second and milliseconds, in UTC."""
    from cryptex_common.logs import JsonFormatter

    formatter = JsonFormatter("api")
    stamps = []
    for second, msecs in ((1_700_000_000, 123), (1_700_000_000, 999), (1_700_000_001, 4), (1_699_999_999, 500)):
        record = logging.LogRecord("cryptex.api", logging.INFO, __file__, 1, "order queued", None, None)
        record.created, record.msecs = second + msecs / 1000, msecs
        stamps.append(json.loads(formatter.format(record))["ts"])
    assert stamps == ["2023-11-14T22:13:20.123Z", "2023-11-14T22:13:20.999Z", "2023-11-14T22:13:21.004Z",
                      "2023-11-14T22:13:19.500Z"]
