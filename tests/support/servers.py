"""Real Redis and PostgreSQL servers on free ports, started for a test run.

Never mocks: tests talk to the real server binaries (Debian's redis-server and
PostgreSQL 15), started under a temporary directory and stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from cryptex_launcher.stack import as_postgres, free_port, pg_bin, wait_for_port

__all__ = ["PostgresServer", "RedisServer", "free_port", "new_database", "postgres_server",
           "redis_server", "start_postgres", "start_redis", "wait_for_port"]


@dataclass
class RedisServer:
    port: int
    dir: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(appendonly: bool = False, directory: str | None = None,
                appendfsync: str = "everysec") -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    workdir = directory or tempfile.mkdtemp(prefix="cryptex-redis-")
    args = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
        "--save", "", "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync, "--logfile", os.path.join(workdir, "redis.log"),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return RedisServer(port, workdir, proc)


@contextlib.contextmanager
def redis_server(appendonly: bool = False, appendfsync: str = "everysec") -> Iterator[RedisServer]:
    server = start_redis(appendonly=appendonly, appendfsync=appendfsync)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@dataclass
class PostgresServer:
    port: int
    dir: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        subprocess.run(
            as_postgres([pg_bin("pg_ctl"), "-D", self.dir, "-m", "fast", "stop"]),
            check=False, capture_output=True,
        )


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a temp dir; as root, runs the server as user postgres."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cryptex-pg-")
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
    server = PostgresServer(port, workdir)
    subprocess.run(
        as_postgres(
            [pg_bin("initdb"), "-D", workdir, "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        ),
        check=True, capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} -c fsync=off"
    subprocess.run(
        as_postgres(
            [pg_bin("pg_ctl"), "-D", workdir, "-o", opts, "-l", f"{workdir}/log", "-w", "start"]
        ),
        check=True, capture_output=True,
    )
    return server


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


async def new_database(server: PostgresServer, name: str | None = None) -> str:
    """Create a database (a fresh random name unless given) and return its URL."""
    name = name or f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url_for(name)
