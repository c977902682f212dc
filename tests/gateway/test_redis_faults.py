"""Redis going away, running out of memory, WAITAOF: never a 2xx for a report not fully in.

These tests own their Valkey server (``own_valkey``): they stop it, restart it, shrink its
memory. They never touch the session's shared server.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from ingest_gateway import stream
from ingest_gateway.app_state import STATE
from tests.support.reports import report_doc

pytestmark = [pytest.mark.integration, pytest.mark.fault]


@pytest.fixture
async def valkey_client(own_valkey):
    """(server, client) of a Valkey this test owns."""
    server = own_valkey()
    client = Redis.from_url(server.url, protocol=2)
    yield server, client
    await client.aclose()


async def test_redis_down_answers_503_and_recovers_when_it_returns(make_gateway, valkey_client):
    server, client = valkey_client
    gateway = await make_gateway(url=server.url, retry_after_s=4)
    assert (await gateway.post_report(report_doc(processes=2))).status == 202

    server.stop()
    down = await gateway.post_report(report_doc(processes=2))
    ready_while_down = await gateway.client.get("/readyz")
    alive_while_down = await gateway.client.get("/healthz")

    assert down.status == 503
    assert down.headers["Retry-After"] == "4"
    assert (await down.json())["error"]["field"] == "redis"
    assert ready_while_down.status == 503
    assert alive_while_down.status == 200

    server.start()  # same port, same data directory (AOF): the group is still there
    doc = report_doc(server_id="after-restart", processes=2)
    back = await gateway.post_report(doc)

    assert back.status == 202
    key = stream.sample_stream(stream.shard_for("after-restart", 4))
    assert await client.xlen(key) >= 4
    assert (await gateway.client.get("/readyz")).status == 200


async def test_out_of_memory_mid_report_is_503_and_not_remembered_as_seen(
    make_gateway, valkey_client, caplog
):
    server, client = valkey_client
    gateway = await make_gateway(url=server.url)
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", used + 300_000)  # room for part of the report only
    doc = report_doc(server_id="big", processes=5_000)
    key = stream.sample_stream(stream.shard_for("big", 4))

    with caplog.at_level(logging.WARNING, logger="ingest_gateway.ingest.enqueue"):
        refused = await gateway.post_report(doc)

    partial = await client.xlen(key)
    assert refused.status == 503
    assert "Retry-After" in refused.headers
    assert "OOM" in (await refused.json())["error"]["reason"]
    assert 0 < partial < 5_002  # some XADDs went in, some were refused: still not a 2xx
    assert await client.exists(stream.report_seen_key(doc["report_id"])) == 0
    assert "report partially enqueued" in caplog.text
    metrics = await (await gateway.client.get("/metrics")).text()
    assert 'procfleet_gateway_rejected_total{reason="redis_oom"} 1.0' in metrics

    await client.config_set("maxmemory", 0)
    retried = await gateway.post_report(doc)

    assert retried.status == 202  # the retry goes through; the database keys absorb repeats
    assert await client.xlen(key) == partial + 5_002
    assert await client.exists(stream.report_seen_key(doc["report_id"])) == 1


async def test_wait_aof_is_used_where_the_server_supports_it(make_gateway, valkey_client):
    server, _ = valkey_client
    gateway = await make_gateway(url=server.url, wait_aof=True)

    assert gateway.app[STATE].wait_aof is True
    assert (await gateway.post_report(report_doc(processes=3))).status == 202
    assert (await (await gateway.client.get("/readyz")).json())["wait_aof"] is True


async def test_wait_aof_without_aof_is_logged_and_skipped(make_gateway, valkey_client, caplog):
    server, client = valkey_client
    await client.config_set("appendonly", "no")

    with caplog.at_level(logging.WARNING, logger="ingest_gateway.app"):
        gateway = await make_gateway(url=server.url, wait_aof=True)

    assert gateway.app[STATE].wait_aof is False
    assert "wait_aof requested but unavailable" in caplog.text
    assert (await gateway.post_report(report_doc(processes=1))).status == 202


async def test_gateway_refuses_to_start_with_another_shard_count(make_gateway, redis):
    await redis.set(stream.SHARDS_KEY, 8)
    with pytest.raises(Exception, match="already holds 8 shards") as raised:
        await make_gateway(shards=4)
    assert "PROCFLEET_SHARDS" in str(raised.value)


async def test_first_gateway_stores_its_shard_count_and_creates_every_group(make_gateway, redis):
    await make_gateway(shards=3)

    assert await redis.get(stream.SHARDS_KEY) == b"3"
    for shard in range(3):
        groups = await redis.xinfo_groups(stream.sample_stream(shard))
        assert [g["name"] for g in groups] == [stream.GROUP.encode()]


async def test_wait_aof_waits_once_for_many_concurrent_reports(make_gateway, valkey_client):
    server, _ = valkey_client
    gateway = await make_gateway(url=server.url, wait_aof=True, redis_pool_size=2)
    barrier = gateway.app[STATE].barrier

    responses = await asyncio.gather(*(
        gateway.post_report(report_doc(server_id=f"h{i}", processes=5)) for i in range(20)))

    assert [r.status for r in responses] == [202] * 20
    assert barrier.rounds < 20  # group commit: reports share the fsync waits


async def test_aof_not_fsynced_in_time_is_503(make_gateway, valkey_client):
    server, client = valkey_client
    gateway = await make_gateway(url=server.url, wait_aof=True, wait_aof_timeout_ms=100)
    await client.config_set("appendfsync", "no")  # the server stops fsyncing on its own

    response = await gateway.post_report(report_doc(processes=2))

    assert response.status == 503
    assert "AOF not fsynced" in (await response.json())["error"]["reason"]


async def test_password_and_database_of_the_url_apply_to_the_fast_path(make_gateway,
                                                                       valkey_client):
    server, client = valkey_client
    await client.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@{server.host}:{server.port}/2"
    gateway = await make_gateway(url=url)

    assert (await gateway.post_report(report_doc(server_id="db2", processes=3))).status == 202

    db2 = Redis.from_url(url, protocol=2)
    try:
        assert await db2.xlen(stream.sample_stream(stream.shard_for("db2", 4))) == 5
    finally:
        await db2.aclose()
