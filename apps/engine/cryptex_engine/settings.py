"""Engine settings (CRYPTEX_ prefix; the market also comes from --market)."""

from __future__ import annotations

from pydantic import Field

from cryptex_common.markets import SYMBOL_PATTERN
from cryptex_common.settings import ServiceSettings


class EngineSettings(ServiceSettings):
    market: str = Field(default="SOL/USDC", pattern=SYMBOL_PATTERN)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    block_ms: int = Field(default=50, ge=1, le=10_000)
    lease_ttl_ms: int = Field(default=5_000, ge=500)
    ticker_interval_ms: int = Field(default=1_000, ge=100)
    recent_trades: int = Field(default=1_000, ge=1)
    # Snapshots: every N commands or T seconds, whichever comes first (0 disables either).
    snapshot_every_commands: int = Field(default=100_000, ge=0)
    snapshot_every_s: float = Field(default=60.0, ge=0)
    # Stream trimming (XTRIM MINID) every T seconds (0 disables): MESSAGES:{M} up to the
    # stored snapshot and the engine group's acknowledged position, events:{M} up to the
    # dbproc group's; both keep this much more history (ms of stream ids) as a margin.
    trim_every_s: float = Field(default=30.0, ge=0)
    trim_margin_ms: int = Field(default=60_000, ge=0)
    # Per-user private updates for wsgateway (user@<id> channels).
    publish_user_updates: bool = True
