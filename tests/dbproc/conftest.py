from __future__ import annotations

import pytest

from tests.dbproc.support import new_database
from tests.support.servers import PostgresServer


@pytest.fixture
async def db_url(postgres: PostgresServer) -> str:
    """A fresh, empty database for one test."""
    return await new_database(postgres)
