"""Settings from the environment (prefix `CRYPTEX_`), shared by every service.

Each service subclasses `ServiceSettings`; a bad value fails at start with a message that
names the variable (see `load_settings`).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cryptex_common.redis_client import cluster_nodes, resolve_url


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRYPTEX_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # "host:port,host:port": a Redis Cluster's seed nodes; when set, redis_url becomes
    # their redis+cluster:// URL (docs/decisions/0013)
    redis_cluster_nodes: str = ""
    # Durability on failover (decision 0013): after each accepted order's writes and each
    # settle step, WAIT until this many replicas acknowledged them (0: never wait; a single
    # Redis has none). A WAIT that times out is counted (cryptex_redis_wait_shortfall_total)
    # and the write stands: availability over the guarantee, visible on the dashboard.
    redis_wait_replicas: int = Field(default=0, ge=0, le=5)
    redis_wait_timeout_ms: int = Field(default=200, gt=0, le=10_000)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/cryptex"
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    instance_id: str = Field(default_factory=default_instance_id)
    # Where /healthz, /readyz and /metrics are served for services without their own
    # HTTP port (engine, dbproc). 0 picks a free port.
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=0, ge=0, le=65535)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _cluster_url(self) -> ServiceSettings:
        self.redis_url = resolve_url(self.redis_url, self.redis_cluster_nodes)
        cluster_nodes(self.redis_url)  # a cluster URL naming no node fails here, at start
        return self


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings or exit(2) with one line per bad variable."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        for err in exc.errors():
            name = (prefix + "_".join(str(p) for p in err["loc"])).upper()
            print(f"configuration error: {name}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
