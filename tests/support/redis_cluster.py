"""A real local Redis Cluster (3 primaries + 3 replicas) for a test, under a temporary
directory that is removed afterwards. Fixtures are registered by the conftest files:

    @pytest.fixture(scope="module")
    def redis_cluster_srv() -> Iterator[LocalCluster]:
        with redis_cluster() as cluster:
            yield cluster
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptex_launcher.redis_cluster import LocalCluster, start_cluster

__all__ = ["LocalCluster", "redis_cluster"]


@contextlib.contextmanager
def redis_cluster(node_timeout_ms: int = 2000) -> Iterator[LocalCluster]:
    """A started cluster; on exit every node is stopped and its directory removed."""
    base = Path(tempfile.mkdtemp(prefix="cryptex-redis-cluster-"))
    try:
        cluster = start_cluster(base, node_timeout_ms=node_timeout_ms)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
