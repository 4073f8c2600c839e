"""API settings (CRYPTEX_ prefix)."""

from __future__ import annotations

from pydantic import Field

from cryptex_common.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    admin_token: str = Field(default="", description="Bearer token for /admin; empty disables admin")
    reply_timeout_ms: int = Field(default=2_000, ge=1, le=60_000)
    max_body_bytes: int = Field(default=16_384, ge=256)
    rate_limit_per_s: float = Field(default=200.0, gt=0)
    rate_limit_burst: int = Field(default=400, ge=1)
    history_enabled: bool = Field(default=True, description="serve DB-backed history routes")
