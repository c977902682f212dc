"""Digest workers on a real cluster (Redis 7.0 and Valkey 8): one command per shard, every
row exactly once, claims and dead letters on the shard's master."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import RedisCluster

from digest_worker import redis_client
from digest_worker.cluster_streams import ClusterGroupConsumer
from digest_worker.settings import WorkerSettings
from digest_worker.worker import Worker
from ingest_gateway import stream
from tests.support.worker import SHARDS, expected_counts, produce, report_messages, table_counts

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).timestamp()


@pytest.fixture
async def cluster_redis(clean_cluster):
    client = RedisCluster.from_url(clean_cluster.url(), protocol=2)
    yield client
    await client.aclose()


@pytest.fixture
def cluster_settings(clean_cluster, migrated_database) -> WorkerSettings:
    return WorkerSettings(
        redis_url=clean_cluster.url(clean_cluster.nodes[1]), database_url=migrated_database,
        shards=SHARDS, batch_size=200, batch_max_wait_ms=20, block_ms=200, socket_timeout_s=5,
        summary_interval_s=3600, retry_max_delay_s=0.5, burst=True)


async def run_burst(settings: WorkerSettings) -> Worker:
    worker = Worker(settings)
    await asyncio.wait_for(worker.run(), 120)
    return worker


async def cluster_stream_state(client: RedisCluster) -> dict[str, int]:
    length = pending = 0
    for shard in range(SHARDS):
        key = stream.sample_stream(shard)
        length += await client.xlen(key)
        pending += (await client.xpending(key, stream.GROUP))["pending"]
    return {"length": length, "pending": pending}


async def test_burst_worker_lands_every_row_once_on_a_cluster(cluster_redis, cluster_settings):
    messages = [m for host in range(12) for m in report_messages(f"host-{host}", NOW - 60)]
    await produce(cluster_redis, messages)
    assert {stream.shard_for(f"host-{h}", SHARDS) for h in range(12)} == set(range(SHARDS))

    worker = await run_burst(cluster_settings)

    assert isinstance(worker.consumer, ClusterGroupConsumer)
    assert await table_counts(cluster_settings.database_url) == expected_counts(messages)
    assert worker.summary.rows == worker.summary.inserted == len(messages)
    assert worker.summary.duplicates == worker.summary.dead_lettered == 0
    assert await cluster_stream_state(cluster_redis) == {"length": 0, "pending": 0}


async def test_poison_goes_to_the_shards_dead_letter_stream_on_a_cluster(
        cluster_redis, cluster_settings):
    good = [m for host in range(4) for m in report_messages(f"ok-{host}", NOW - 10)]
    await produce(cluster_redis, good)
    shard = stream.shard_for("ok-0", SHARDS)
    bad = await cluster_redis.xadd(stream.sample_stream(shard), {b"v": b"99", b"d": b"[]"})

    worker = await run_burst(cluster_settings)

    assert worker.summary.dead_lettered == 1
    assert await table_counts(cluster_settings.database_url) == expected_counts(good)
    [(_id, fields)] = await cluster_redis.xrange(stream.dead_letter_stream(shard))
    assert fields[b"original_id"] == bad
    assert fields[b"reason"].decode().startswith("cannot decode: ")
    assert await cluster_stream_state(cluster_redis) == {"length": 0, "pending": 0}


async def test_entries_of_a_dead_consumer_are_claimed_on_a_cluster(cluster_redis,
                                                                   cluster_settings):
    messages = [m for host in range(8) for m in report_messages(f"gone-{host}", NOW - 30)]
    await produce(cluster_redis, messages)
    for shard in range(SHARDS):  # a consumer that read everything and died
        await cluster_redis.xgroup_create(stream.sample_stream(shard), stream.GROUP, id="0",
                                          mkstream=True)
        await cluster_redis.xreadgroup(stream.GROUP, "ghost",
                                       {stream.sample_stream(shard): ">"})
    assert (await cluster_stream_state(cluster_redis))["pending"] == len(messages)

    worker = await run_burst(cluster_settings.with_overrides(claim_idle_ms=1))

    assert await table_counts(cluster_settings.database_url) == expected_counts(messages)
    assert worker.summary.rows == len(messages)
    assert await cluster_stream_state(cluster_redis) == {"length": 0, "pending": 0}


async def test_consumer_reads_polls_settles_and_forgets_idle_consumers(cluster_redis,
                                                                       clean_cluster):
    commands, reader = await redis_client.open_clients(clean_cluster.url(), 5)
    try:
        assert reader is None and isinstance(commands, RedisCluster)
        consumer = ClusterGroupConsumer(commands, "me", SHARDS)
        assert sorted(await consumer.ensure_groups()) == list(range(SHARDS))
        # A read waits (polling) up to block_ms for entries added meanwhile.
        reading = asyncio.create_task(consumer.read(100, 3000))
        await asyncio.sleep(0.2)
        assert not reading.done()
        messages = report_messages("sum-1", NOW - 5)
        await produce(cluster_redis, messages)
        got = await asyncio.wait_for(reading, 5)
        assert got
        got += await consumer.read(100, None)
        assert len(got) == len(messages)
        stats = await consumer.stats()
        assert sum(s["pending"] for s in stats.values()) == len(messages)
        assert sum(s["backlog"] for s in stats.values()) == len(messages)
        for shard in range(SHARDS):  # a worker gone for good: holds nothing on any shard
            await commands.xgroup_createconsumer(stream.sample_stream(shard), stream.GROUP,
                                                 "old")
        assert await consumer.delete_idle_consumers(0) == ["old"]
        pending = await consumer.read_own_pending(2)  # id 0, in pages of 2
        assert [e.entry_id for e in pending] == [e.entry_id for e in got]
        assert await consumer.settle(got, []) == 0
        assert await cluster_stream_state(cluster_redis) == {"length": 0, "pending": 0}
    finally:
        await commands.aclose()


async def test_a_settle_retried_after_a_shard_failed_dead_letters_nothing_twice(
        cluster_redis, clean_cluster):
    commands, _ = await redis_client.open_clients(clean_cluster.url(), 5)
    try:
        consumer = ClusterGroupConsumer(commands, "me", SHARDS)
        await consumer.ensure_groups()
        poison = {shard: await cluster_redis.xadd(stream.sample_stream(shard), {b"x": b"1"})
                  for shard in range(SHARDS)}
        got = await consumer.read(10, None)
        assert len(got) == SHARDS
        dead = [(entry, "poison") for entry in got]
        real_settle_shard = consumer._settle_shard
        failed: list[int] = []

        async def failing_once(shard, ids, dead_of_shard):
            if shard == 0 and not failed:  # shard 0's master goes away for a moment
                failed.append(shard)
                raise ConnectionError("master gone")
            await real_settle_shard(shard, ids, dead_of_shard)

        consumer._settle_shard = failing_once
        with pytest.raises(ConnectionError):
            await consumer.settle(got, dead)
        assert await consumer.settle(got, dead) == 0  # the retry, as the worker's does

        for shard in range(SHARDS):
            letters = await cluster_redis.xrange(stream.dead_letter_stream(shard))
            assert [f[b"original_id"] for _id, f in letters] == [poison[shard]]
        assert await cluster_stream_state(cluster_redis) == {"length": 0, "pending": 0}
        assert consumer._settled == {}
    finally:
        await commands.aclose()
