"""Backpressure (503 + Retry-After above the high-water mark) and the consumer-group upkeep."""

from __future__ import annotations

import asyncio

import pytest

from ingest_gateway import stream
from ingest_gateway.app_state import STATE
from tests.support.reports import report_doc, total_messages

pytestmark = pytest.mark.integration


async def wait_for_backlog(gateway, shard: int, predicate) -> int:
    """Let the background monitor refresh until its figure for ``shard`` satisfies
    ``predicate`` (bounded: the test fails rather than hangs)."""
    monitor = gateway.app[STATE].monitor
    for _ in range(200):
        backlog = monitor.backlog.get(shard, 0)
        if predicate(backlog):
            return backlog
        await asyncio.sleep(0.02)
    raise AssertionError(f"backlog of shard {shard} stayed at {monitor.backlog.get(shard)}")


async def drain_shard(redis, shard: int) -> None:
    """What a digest worker does: read with the group, acknowledge, delete."""
    key = stream.sample_stream(shard)
    for _, entries in await redis.xreadgroup(stream.GROUP, "test", {key: ">"}, count=10_000):
        ids = [entry_id for entry_id, _ in entries]
        await redis.xack(key, stream.GROUP, *ids)
        await redis.xdel(key, *ids)


async def test_backlog_over_high_water_mark_answers_503_with_retry_after(make_gateway, redis):
    gateway = await make_gateway(backlog_high_water=10, retry_after_s=7)
    shard = stream.shard_for("busy", 4)
    assert (await gateway.post_report(report_doc(server_id="busy", processes=20))).status == 202
    await wait_for_backlog(gateway, shard, lambda b: b > 10)
    before = await total_messages(redis, 4)

    response = await gateway.post_report(report_doc(server_id="busy", processes=1))

    assert response.status == 503
    assert response.headers["Retry-After"] == "7"
    error = (await response.json())["error"]
    assert error["field"] == "backlog" and "high-water" in error["reason"]
    assert await total_messages(redis, 4) == before


async def test_other_shards_keep_accepting_while_one_is_backed_up(make_gateway, redis):
    gateway = await make_gateway(backlog_high_water=10)
    busy = stream.shard_for("busy", 4)
    other = next(f"host-{i}" for i in range(100) if stream.shard_for(f"host-{i}", 4) != busy)
    await gateway.post_report(report_doc(server_id="busy", processes=20))
    await wait_for_backlog(gateway, busy, lambda b: b > 10)

    response = await gateway.post_report(report_doc(server_id=other, processes=1))

    assert response.status == 202


async def test_accepting_resumes_once_workers_drain_the_backlog(make_gateway, redis):
    gateway = await make_gateway(backlog_high_water=10)
    shard = stream.shard_for("busy", 4)
    await gateway.post_report(report_doc(server_id="busy", processes=20))
    await wait_for_backlog(gateway, shard, lambda b: b > 10)
    assert (await gateway.post_report(report_doc(server_id="busy"))).status == 503

    await drain_shard(redis, shard)
    await wait_for_backlog(gateway, shard, lambda b: b == 0)

    assert (await gateway.post_report(report_doc(server_id="busy"))).status == 202


async def test_backlog_counts_pending_and_undelivered_entries(make_gateway, redis):
    gateway = await make_gateway(backlog_refresh_s=3600)  # refreshed by hand below
    monitor = gateway.app[STATE].monitor
    shard = stream.shard_for("web", 4)
    await gateway.post_report(report_doc(server_id="web", processes=8))  # 10 messages
    key = stream.sample_stream(shard)
    await redis.xreadgroup(stream.GROUP, "w1", {key: ">"}, count=4)  # 4 pending, 6 undelivered

    await monitor.refresh()

    assert monitor.backlog[shard] == 10
    metrics = await (await gateway.client.get("/metrics")).text()
    assert f'procfleet_gateway_backlog_messages{{shard="{shard}"}} 10.0' in metrics


async def test_missing_group_is_recreated_from_id_zero_so_nothing_is_skipped(make_gateway, redis):
    gateway = await make_gateway(backlog_refresh_s=3600)
    shard = stream.shard_for("web", 4)
    key = stream.sample_stream(shard)
    await redis.delete(key, stream.SHARDS_KEY)  # as after a Redis restart without its data
    assert (await gateway.client.get("/readyz")).status == 503
    # XADD recreates the stream, but not the group: these entries predate the group.
    assert (await gateway.post_report(report_doc(server_id="web", processes=2))).status == 202

    await gateway.app[STATE].monitor.refresh()

    assert (await gateway.client.get("/readyz")).status == 200
    delivered = await redis.xreadgroup(stream.GROUP, "w1", {key: ">"}, count=100)
    assert len(delivered[0][1]) == 4
    assert await redis.get(stream.SHARDS_KEY) == b"4"


async def test_readyz_and_healthz_when_all_is_well(gateway):
    ready = await gateway.client.get("/readyz")
    alive = await gateway.client.get("/healthz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"
    assert alive.status == 200
