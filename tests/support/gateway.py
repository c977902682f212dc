"""The gateway factory of every suite: ``await make_gateway(shards=2, ...)`` starts the whole
gateway app (ingest, query API, dashboard) on a local port with settings overridden by the
keyword arguments, and one ingest and one read token; it is stopped after the test.

Registered as a plugin by ``tests/conftest.py``; it needs the ``redis_url`` and ``redis``
fixtures (the session's server, its ``procfleet:*`` key space empty around the test).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

import orjson
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.test_utils import TestServer as _Server
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

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        """Headers of an ingest request (the ingest token unless ``token``)."""
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

    def auth(self, token: str | None = None) -> dict[str, str]:
        """Headers of a query request (the read token unless ``token``)."""
        return {"Authorization": f"Bearer {token or self.read_token}"}

    async def get(self, path: str, params: Any = None, token: str | None = None):
        return await self.client.get(path, params=params, headers=self.auth(token))

    async def get_json(self, path: str, params: Any = None, status: int = 200) -> Any:
        response = await self.get(path, params)
        body = await response.json()
        assert response.status == status, body
        return body

    async def refresh_tokens(self) -> None:
        await self.app[STATE].tokens.refresh()


@pytest_asyncio.fixture
async def make_gateway(redis_url, redis):
    """Factory: ``await make_gateway(url=None, extra_routes=(), **settings)``."""
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
        client = TestClient(_Server(app))
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
