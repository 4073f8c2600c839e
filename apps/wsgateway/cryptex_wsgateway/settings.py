"""Gateway settings (environment, prefix `CRYPTEX_`); defaults suit a local `./cryptex up`."""

from __future__ import annotations

from pydantic import Field

from cryptex_common.settings import ServiceSettings


class WsSettings(ServiceSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    # Per socket
    max_streams: int = Field(default=200, ge=1)  # subscriptions on one socket
    max_frame_bytes: int = Field(default=16_384, ge=256)  # largest inbound frame
    rate_per_s: float = Field(default=10.0, gt=0)  # inbound control messages per second
    rate_burst: int = Field(default=20, ge=1)
    flood_close_after: int = Field(default=20, ge=1)  # refused messages before closing
    max_queue_messages: int = Field(default=2_000, ge=1)  # frames waiting in the gateway
    max_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # bytes in the transport
    ping_interval_s: float = Field(default=20.0, gt=0)  # pong due within half of it
    idle_timeout_s: float = Field(default=300.0, gt=0)  # no subscription and no message
    # Fan-out: frames for one socket within this window go out in one write (0 = next
    # event-loop turn, which still coalesces whatever arrived while the loop was busy).
    coalesce_ms: float = Field(default=0.0, ge=0, le=1000)
    resync_wait_s: float = Field(default=1.0, gt=0)  # how long a re-snapshot waits for Redis
