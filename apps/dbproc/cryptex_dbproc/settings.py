"""dbproc settings (environment, prefix `CRYPTEX_`)."""

from __future__ import annotations

from pydantic import Field

from cryptex_common.settings import ServiceSettings


class DbprocSettings(ServiceSettings):
    # Stable across restarts, so a restarted dbproc finds its own pending entries. Run one
    # dbproc per Redis (replicas: 1); a second one would only redo work (see docs/dbproc.md).
    dbproc_consumer: str = "dbproc"
    # Stream entries read per market per round (each entry is one engine batch).
    dbproc_read_count: int = Field(default=200, ge=1, le=10_000)
    dbproc_block_ms: int = Field(default=500, ge=1, le=10_000)
    # After a read that was not full (fewer than dbproc_read_count entries from every
    # market), the next read waits until this long after it, so a round carries the events
    # of that window instead of one engine batch: under light and medium load a round's fixed
    # cost (a transaction, ~8 statements, XACK) is shared by many orders. Adds at most this
    # much to the trade -> candle lag; 0 reads again at once.
    dbproc_linger_ms: float = Field(default=50.0, ge=0, le=10_000)
    # Registry re-read even without a markets:changed message (a missed pub/sub message).
    dbproc_markets_refresh_s: float = Field(default=30.0, gt=0)
    dbproc_retry_max_s: float = Field(default=5.0, gt=0)
    dbproc_dead_letter_maxlen: int = Field(default=100_000, ge=100)
