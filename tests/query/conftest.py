"""Fixtures of the query tests: a migrated database, a connection to it, and a gateway app
with the query routes, a read token and an ingest token.

Every test starts and ends with no ``procfleet:*`` key in the session's Redis (never
FLUSHALL: in CI that server is shared with other suites).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ingest_gateway import routes_query, stream
from ingest_gateway.app import create_app
from ingest_gateway.auth import TokenStore
from ingest_gateway.settings import GatewaySettings
from migrations.runner import migrate


async def _delete_procfleet_keys(client: Redis) -> None:
    keys = [key async for key in client.scan_iter(match=f"{stream.KEY_PREFIX}*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest_asyncio.fixture
async def query_redis(redis_url) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, protocol=2)
    await _delete_procfleet_keys(client)
    yield client
    await _delete_procfleet_keys(client)
    await client.aclose()


async def wait_for_postgres(url: str, timeout_s: float = 30.0) -> None:
    """The embedded server listens before it accepts connections ("starting up")."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = await asyncpg.connect(url)
        except (asyncpg.CannotConnectNowError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            await conn.close()
            return


@pytest_asyncio.fixture
async def database_url(postgres_admin_url, fresh_database) -> str:
    """A new database with every migration applied."""
    await wait_for_postgres(postgres_admin_url)
    url = await fresh_database()
    await migrate(url)
    return url


@pytest_asyncio.fixture
async def db(database_url) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@dataclass
class QueryGateway:
    """A running gateway with the query routes, a client and one token per scope."""

    client: TestClient
    read_token: str
    ingest_token: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.read_token}"}

    async def get(self, path: str, params: Any = None, token: str | None = None):
        return await self.client.get(path, params=params, headers=self.auth(token))

    async def get_json(self, path: str, params: Any = None, status: int = 200) -> Any:
        response = await self.get(path, params)
        body = await response.json()
        assert response.status == status, body
        return body


@pytest_asyncio.fixture
async def make_query_gateway(redis_url, query_redis):
    """Factory: ``await make_query_gateway(database_url)`` starts a gateway app (ingest +
    query routes) on a local port; stopped after the test."""
    started: list[TestClient] = []

    async def make(database_url: str, **overrides: Any) -> QueryGateway:
        overrides.setdefault("token_refresh_s", 0.2)
        overrides.setdefault("redis_startup_wait_s", 2.0)
        overrides.setdefault("retry_after_s", 3)
        settings = GatewaySettings(redis_url=redis_url, database_url=database_url, **overrides)
        store = TokenStore(query_redis)
        _, read_token = await store.create("read", "query-tests")
        _, ingest_token = await store.create("ingest", "query-tests")
        app = create_app(settings, extra_routes=[routes_query.setup])
        client = TestClient(TestServer(app))
        await client.start_server()
        started.append(client)
        return QueryGateway(client, read_token, ingest_token)

    yield make
    for client in started:
        await client.close()


@pytest_asyncio.fixture
async def query_gateway(make_query_gateway, database_url) -> QueryGateway:
    return await make_query_gateway(database_url)
