"""Numbered SQL migrations (`migrations/NNNN_name.sql`), applied in order, each once.

Invariants:
- `schema_migrations(version)` lists what is applied; a migration and its row are written in
  one transaction, so a crash leaves it either fully applied or not at all.
- A session advisory lock serialises concurrent runners (two dbproc starts at once).
- A file whose first lines say `-- cryptex: requires-extension NAME` is applied only when
  NAME is in `pg_available_extensions`; otherwise it is skipped and not recorded, so it is
  applied by a later run once the extension exists (used for TimescaleDB hypertables).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK_KEY = 0x43525950_44425052  # "CRYPDBPR": any constant shared by runners
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_REQUIRES = re.compile(r"^--\s*cryptex:\s*requires-extension\s+([a-z0-9_]+)\s*$", re.M)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def required_extensions(self) -> list[str]:
        return _REQUIRES.findall(self.sql)


def load_migrations() -> list[Migration]:
    found = []
    for entry in MIGRATIONS_DIR.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {[m.name for m in found]}")
    return found


async def available_extensions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT name FROM pg_available_extensions")
    return {r["name"] for r in rows}


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        extensions = await available_extensions(conn)
        for m in load_migrations():
            if m.version in done:
                continue
            missing = [e for e in m.required_extensions if e not in extensions]
            if missing:
                log.info("migration skipped", extra={"migration": m.name, "missing": missing})
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1,$2,$3)",
                    m.version, m.name, int(time.time() * 1000),
                )
            log.info("migration applied", extra={"migration": m.name})
            applied_now.append(m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
