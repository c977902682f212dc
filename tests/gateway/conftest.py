"""Fixtures of the gateway tests: a clean Redis key space, a gateway factory, report builders.

Every test starts and ends with no ``procfleet:*`` key in the session's Redis (never
FLUSHALL: in CI that server is shared with other suites).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

import orjson
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ingest_gateway.app import create_app
from ingest_gateway.app_state import STATE
from ingest_gateway.auth import TokenStore
from ingest_gateway.settings import GatewaySettings


@dataclass
class Gateway:
    """A running gateway app with a test client and one token per scope."""

    app: web.Application
    client: TestClient
    settings: GatewaySettings
    ingest_token: str
    read_token: str

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.ingest_token}",
                "Content-Type": "application/json", **extra}

    async def post(self, path: str, doc: Any = None, *, data: bytes | None = None,
                   headers: dict[str, str] | None = None, gzip_body: bool = False):
        body = data if data is not None else orjson.dumps(doc)
        hdrs = headers if headers is not None else self.headers()
        if gzip_body:
            body = gzip.compress(body)
            hdrs = {**hdrs, "Content-Encoding": "gzip"}
        return await self.client.post(path, data=body, headers=hdrs)

    async def post_report(self, doc: Any, **kwargs):
        return await self.post("/v1/reports", doc, **kwargs)

    async def refresh_tokens(self) -> None:
        await self.app[STATE].tokens.refresh()


@pytest_asyncio.fixture
async def make_gateway(redis_url, redis):
    """Factory: ``await make_gateway(shards=2, ...)`` starts a gateway on a local port with
    settings overridden by the keyword arguments; stopped after the test."""
    started: list[TestClient] = []

    async def make(url: str | None = None, extra_routes=(), **overrides: Any) -> Gateway:
        overrides.setdefault("backlog_refresh_s", 0.1)
        overrides.setdefault("token_refresh_s", 0.2)
        overrides.setdefault("redis_startup_wait_s", 2.0)
        overrides.setdefault("redis_timeout_s", 2.0)
        overrides.setdefault("retry_after_s", 3)
        settings = GatewaySettings(redis_url=url or redis_url, **overrides)
        token_redis = Redis.from_url(settings.redis_url, protocol=2)
        store = TokenStore(token_redis)
        _, ingest_token = await store.create("ingest", "tests")
        _, read_token = await store.create("read", "tests-read")
        await token_redis.aclose()
        app = create_app(settings, extra_routes=extra_routes)
        client = TestClient(TestServer(app))
        await client.start_server()
        started.append(client)
        return Gateway(app, client, settings, ingest_token, read_token)

    yield make
    for client in started:
        await client.close()


@pytest_asyncio.fixture
async def gateway(make_gateway) -> Gateway:
    """A gateway with default settings (4 shards)."""
    return await make_gateway()
