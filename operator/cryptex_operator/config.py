"""Operator settings from the environment (prefix `CRYPTEX_`)."""

from __future__ import annotations

from pydantic import Field

from cryptex_common.settings import ServiceSettings


class OperatorSettings(ServiceSettings):
    # The engine pods the operator creates.
    engine_image: str = "cryptex/engine:latest"
    engine_image_pull_policy: str = Field(
        default="IfNotPresent", pattern=r"^(Always|IfNotPresent|Never)$"
    )
    # A Secret holding CRYPTEX_REDIS_URL (and any other CRYPTEX_* setting) for the engines.
    # Empty: the engines get CRYPTEX_REDIS_URL as a plain value (dev only).
    engine_env_secret: str = ""
    engine_log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    engine_ops_port: int = Field(default=9100, ge=1, le=65535)
    # The chart's release: engines get app.kubernetes.io/instance=<release>, which the
    # engine ServiceMonitor's Service selects on.
    release: str = "cryptex"
    # Where to watch Markets: a namespace, or empty for the whole cluster.
    watch_namespace: str = ""
    peering_name: str = "cryptex-operator"
    standalone: bool = False
    liveness_port: int = Field(default=8080, ge=1, le=65535)
    # Status is refreshed at most once per interval, and only written when it changed.
    status_interval_s: float = Field(default=15.0, gt=0)
    drain_poll_s: float = Field(default=10.0, gt=0)
    # Within one drain attempt, how long to wait for the engine to settle a state change.
    drain_wait_s: float = Field(default=3.0, ge=0)
    # Dev and tests only: talk to this API server URL instead of the in-cluster config.
    k8s_server: str = ""
