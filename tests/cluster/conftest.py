"""Fixtures of the cluster tests: a real 3 masters + 3 replicas cluster per engine.

``cluster`` is one cluster per engine for the session (Redis 7.0 from the machine, Valkey 8
from the wheel), with a password so that every test also checks that credentials reach every
node the clients learn; ``own_cluster`` starts a cluster a test may break (kill -9, migrate).
The ``procfleet:*`` key space is emptied on every master around each test.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import RedisCluster

from ingest_gateway.app import create_app
from ingest_gateway.auth import TokenStore
from ingest_gateway.settings import GatewaySettings
from tests.support.redis_cluster import ENGINES, LocalCluster

PASSWORD = "pf-cluster-secret"


def _start(engine: str) -> tuple[LocalCluster, Path]:
    base = Path(tempfile.mkdtemp(prefix=f"procfleet-cluster-{engine}-"))
    return LocalCluster(engine, base, password=PASSWORD).start(), base


def empty_keyspace(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        if not node.alive:
            continue
        client = cluster.client(node)
        if client.info("replication")["role"] != "master":
            continue
        for key in client.scan_iter(match="procfleet:*", count=1000):
            client.delete(key)


@pytest.fixture(scope="session", params=ENGINES)
def cluster(request):
    local, base = _start(request.param)
    yield local
    local.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean_cluster(cluster):
    """The session's cluster of this engine, with no ``procfleet:*`` key around the test."""
    empty_keyspace(cluster)
    yield cluster
    empty_keyspace(cluster)


@pytest.fixture(params=ENGINES)
def own_cluster(request):
    """A cluster of each engine that this test owns (it may kill nodes or move slots)."""
    local, base = _start(request.param)
    yield local
    local.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture
async def make_cluster_gateway():
    """Factory: ``await make_cluster_gateway(url, shards=4, ...)`` starts a gateway on ``url``
    (any cluster node) with one ingest token; returns ``(client, app, token)``."""
    started: list[TestClient] = []

    async def make(url: str, **overrides: Any) -> tuple[TestClient, web.Application, str]:
        overrides.setdefault("backlog_refresh_s", 0.1)
        overrides.setdefault("token_refresh_s", 0.2)
        overrides.setdefault("redis_startup_wait_s", 5.0)
        overrides.setdefault("redis_timeout_s", 2.0)
        overrides.setdefault("retry_after_s", 1)
        settings = GatewaySettings(redis_url=url, **overrides)
        tokens = RedisCluster.from_url(url, protocol=2)
        _, token = await TokenStore(tokens).create("ingest", "cluster-tests")
        await tokens.aclose()
        app = create_app(settings, extra_routes=())
        client = TestClient(TestServer(app))
        await client.start_server()
        started.append(client)
        return client, app, token

    yield make
    for client in started:
        await client.close()
