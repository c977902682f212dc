"""Fixtures of the query tests: a migrated database, a connection to it, and a gateway app
with the query routes, a read token and an ingest token.

Every test starts and ends with no ``procfleet:*`` key in the session's Redis (never
FLUSHALL: in CI that server is shared with other suites).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway.app import create_app
from ingest_gateway.auth import TokenStore
from ingest_gateway.settings import GatewaySettings


@pytest_asyncio.fixture
async def database_url(migrated_database) -> str:
    """A new database with every migration applied."""
    return migrated_database


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
async def make_query_gateway(redis_url, redis):
    """Factory: ``await make_query_gateway(database_url)`` starts a gateway app (ingest +
    query routes) on a local port; stopped after the test."""
    started: list[TestClient] = []

    async def make(database_url: str, **overrides: Any) -> QueryGateway:
        overrides.setdefault("token_refresh_s", 0.2)
        overrides.setdefault("redis_startup_wait_s", 2.0)
        overrides.setdefault("retry_after_s", 3)
        settings = GatewaySettings(redis_url=redis_url, database_url=database_url, **overrides)
        store = TokenStore(redis)
        _, read_token = await store.create("read", "query-tests")
        _, ingest_token = await store.create("ingest", "query-tests")
        app = create_app(settings)
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
