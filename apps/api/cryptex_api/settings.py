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
    rate_limit_per_s: float = Field(default=200.0, gt=0, description="per API key")
    rate_limit_burst: int = Field(default=400, ge=1)
    public_rate_limit_per_s: float = Field(default=100.0, gt=0, description="per client address, public routes")
    public_rate_limit_burst: int = Field(default=400, ge=1)
    admin_rate_limit_per_s: float = Field(default=100.0, gt=0, description="per client address, admin routes")
    admin_rate_limit_burst: int = Field(default=1_000, ge=1)
    history_enabled: bool = Field(default=True, description="serve DB-backed history routes")
    # Hostile-traffic bounds (docs/decisions/0006-api-choices.md)
    max_connections: int = Field(default=2_000, ge=1, description="open connections; more get 503")
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="a request's headers must arrive within this of connecting or of the previous response",
    )
    body_timeout_s: float = Field(default=10.0, gt=0, description="a request body must arrive within this")
    redis_order_connections: int = Field(default=128, ge=2, description="pool for signed and admin routes")
    redis_order_wait_s: float = Field(default=5.0, gt=0, description="wait for a free order-pool connection")
    redis_public_connections: int = Field(default=32, ge=1, description="pool for public reads and key lookups")
    redis_public_wait_s: float = Field(default=0.5, gt=0, description="wait for a free public-pool connection")
