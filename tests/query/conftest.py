"""Fixtures of the query tests: a migrated database, a connection to it, and the gateway over
it (``tests.support.gateway``: ingest and query routes, a read and an ingest token).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from tests.support.gateway import Gateway


@pytest_asyncio.fixture
async def database_url(migrated_database) -> str:
    """A new database with every migration applied."""
    return migrated_database


@pytest_asyncio.fixture
async def db(database_url) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest_asyncio.fixture
async def query_gateway(make_gateway, database_url) -> Gateway:
    """The gateway (``tests.support.gateway``) over this test's migrated database."""
    return await make_gateway(database_url=database_url)
