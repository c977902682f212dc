"""Fuzzing the ingest routes with hypothesis against a real gateway and a real Redis.

Properties: the gateway never answers 5xx to bad input; every refusal is our JSON error; a
refusal enqueues nothing; an acceptance enqueues exactly one message per process and group
(+ host + snapshots). The gateway runs in a thread with its own event loop on a real port, so
hypothesis drives it with a plain synchronous HTTP client.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis as redis_sync
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_gateway import stream
from ingest_gateway.app import create_app
from ingest_gateway.auth import TokenStore
from ingest_gateway.settings import GatewaySettings
from tests.support.reports import report_doc

pytestmark = pytest.mark.integration

SHARDS = 4
ERROR_STATUSES = {400, 413, 415, 422}


@dataclass
class ThreadedGateway:
    url: str
    token: str
    redis: redis_sync.Redis
    http: httpx.Client

    def messages(self) -> int:
        return sum(self.redis.xlen(stream.sample_stream(s)) for s in range(SHARDS))


def _clean(client: redis_sync.Redis) -> None:
    keys = list(client.scan_iter(match=f"{stream.KEY_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def threaded_gateway(redis_url) -> Iterator[ThreadedGateway]:
    client = redis_sync.Redis.from_url(redis_url, protocol=2)
    _clean(client)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict = {}

    async def start() -> None:
        redis_async = __import__("redis.asyncio", fromlist=["Redis"]).Redis.from_url(redis_url)
        _, holder["token"] = await TokenStore(redis_async).create("ingest", "fuzz")
        await redis_async.aclose()
        app = create_app(GatewaySettings(redis_url=redis_url, shards=SHARDS,
                                         rate_limit_per_s=0, max_body_bytes=256_000))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = site._server.sockets[0].getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "gateway thread did not start"
    http = httpx.Client(base_url=f"http://127.0.0.1:{holder['port']}", timeout=30)
    yield ThreadedGateway(str(http.base_url), holder["token"], client, http)
    http.close()
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    _clean(client)
    client.close()


def post(gw: ThreadedGateway, path: str, body: bytes) -> httpx.Response:
    return gw.http.post(path, content=body, headers={
        "Authorization": f"Bearer {gw.token}", "Content-Type": "application/json"})


def dumps(doc) -> bytes:
    """The stdlib encoder: unlike orjson it writes integers beyond 64 bits, which we want
    the gateway to see."""
    return json.dumps(doc).encode()


def assert_refusal_shape(response: httpx.Response) -> None:
    assert response.status_code in ERROR_STATUSES, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["status"] == response.status_code
    assert isinstance(error["field"], str) and isinstance(error["reason"], str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _paths(node, prefix=()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


TEMPLATE = report_doc(processes=2, groups=1, snapshots=[
    {"source": "ps", "sha256": "c" * 64, "raw_output": "PID CMD\n"}])
TEMPLATE_PATHS = _paths(TEMPLATE)


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes_are_refused_cleanly(threaded_gateway, body):
    before = threaded_gateway.messages()
    response = post(threaded_gateway, "/v1/reports", body)
    assert_refusal_shape(response)
    assert threaded_gateway.messages() == before


@FUZZ
@given(doc=json_values)
def test_random_json_is_refused_cleanly(threaded_gateway, doc):
    before = threaded_gateway.messages()
    for path in ("/v1/reports", "/v1/commands"):
        assert_refusal_shape(post(threaded_gateway, path, dumps(doc)))
    assert threaded_gateway.messages() == before


@FUZZ
@given(data=st.data())
def test_mutated_reports_are_all_or_nothing(threaded_gateway, data):
    doc = copy.deepcopy(TEMPLATE)
    doc["report_id"] = f"fuzz-{data.draw(st.uuids()).hex}"
    path = data.draw(st.sampled_from(TEMPLATE_PATHS))
    value = data.draw(json_values)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    before = threaded_gateway.messages()

    response = post(threaded_gateway, "/v1/reports", dumps(doc))

    after = threaded_gateway.messages()
    if response.status_code == 202:
        accepted = response.json()["accepted"]
        expected = 1 + len(doc["snapshots"]) + accepted["groups"] + accepted["processes"]
        assert after - before == expected
    elif response.status_code == 200:
        assert response.json()["duplicate"] is True and after == before
    else:
        assert_refusal_shape(response)
        assert after == before
