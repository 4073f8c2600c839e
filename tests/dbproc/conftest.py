from __future__ import annotations

import pytest

from tests.support.servers import PostgresServer, new_database


@pytest.fixture
async def db_url(postgres: PostgresServer) -> str:
    """A fresh, empty database for one test."""
    return await new_database(postgres)
