"""Entries are never stuck: stalled entries are claimed, over-delivered ones dead-lettered,
a vanished consumer group is recreated, and a worker resumes its own pending entries."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from digest_worker.redis_client import connect
from digest_worker.streams import GroupConsumer
from digest_worker.worker import Worker
from ingest_gateway import stream
from tests.support.polling import wait_until
from tests.support.worker import (
    SHARDS,
    age_pending,
    expected_counts,
    produce,
    report_messages,
    run_burst,
    stream_state,
    table_counts,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).timestamp()
KEYS = [stream.sample_stream(n) for n in range(SHARDS)]


async def create_groups(redis) -> None:
    for key in KEYS:
        await redis.xgroup_create(key, stream.GROUP, id="0", mkstream=True)


async def read_as(redis, consumer: str, count: int = 1000) -> int:
    """Deliver entries to ``consumer`` (which then "dies" without acknowledging them)."""
    reply = await redis.xreadgroup(stream.GROUP, consumer, dict.fromkeys(KEYS, ">"),
                                   count=count)
    return sum(len(entries) for _key, entries in reply)


async def test_stalled_entries_of_a_dead_consumer_are_claimed_by_another(redis, settings):
    messages = [m for host in range(4) for m in report_messages(f"h{host}", NOW - 20)]
    await create_groups(redis)
    await produce(redis, messages)
    assert await read_as(redis, "dead-consumer") == len(messages)
    assert await age_pending(redis, idle_ms=120_000) == len(messages)

    worker = await run_burst(settings, claim_idle_ms=60_000)

    assert await table_counts(settings.database_url) == expected_counts(messages)
    assert worker.summary.rows == len(messages)
    assert await stream_state(redis) == {"length": 0, "pending": 0}


async def test_entries_not_yet_idle_long_enough_are_left_to_their_consumer(redis, settings):
    await create_groups(redis)
    await produce(redis, report_messages("busy", NOW - 20))
    delivered = await read_as(redis, "busy-consumer")

    worker = await run_burst(settings, claim_idle_ms=60_000)

    assert worker.summary.rows == 0
    assert await stream_state(redis) == {"length": delivered, "pending": delivered}


async def test_entry_delivered_more_than_max_deliveries_is_dead_lettered(redis, settings,
                                                                          caplog):
    await create_groups(redis)
    [poison_id] = await produce(redis, report_messages("crashy", NOW - 20)[:1])
    key = stream.sample_stream(stream.shard_for("crashy", SHARDS))
    await read_as(redis, "crashed-1")
    for attempt in range(2, 4):  # two more consumers took it and crashed
        await redis.xclaim(key, stream.GROUP, f"crashed-{attempt}", 0, [poison_id])
    assert await age_pending(redis, idle_ms=120_000) == 1

    with caplog.at_level(logging.ERROR, logger="digest_worker"):
        worker = await run_burst(settings, claim_idle_ms=60_000, max_deliveries=3)

    assert worker.summary.dead_lettered == 1
    [(_id, fields)] = await redis.xrange(stream.dead_letter_stream(
        stream.shard_for("crashy", SHARDS)))
    assert fields[b"original_id"] == poison_id
    assert fields[b"reason"] == b"delivered 4 times (max_deliveries=3)"
    assert fields[b"deliveries"] == b"4"
    assert (await table_counts(settings.database_url))["servers"] == 0
    [line] = [r for r in caplog.records if r.getMessage() == "entry dead-lettered"]
    assert "max_deliveries=3" in line.kv["reason"]


async def test_worker_first_rereads_its_own_pending_entries(redis, settings):
    await create_groups(redis)
    messages = report_messages("mine", NOW - 20)
    await produce(redis, messages)
    # This consumer name read them before (a previous run of the same consumer).
    assert await read_as(redis, settings.consumer_name) == len(messages)

    worker = await run_burst(settings, claim_idle_ms=3_600_000)

    assert worker.summary.rows == len(messages)
    assert await table_counts(settings.database_url) == expected_counts(messages)
    assert await stream_state(redis) == {"length": 0, "pending": 0}


async def test_group_that_disappears_is_recreated_with_an_error_line(redis, settings, caplog):
    first = report_messages("regroup", NOW - 30)
    later = report_messages("regroup", NOW - 20)
    await produce(redis, first)
    worker = Worker(settings.with_overrides(burst=False, block_ms=100))
    with caplog.at_level(logging.INFO, logger="digest_worker"):
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: _rows(worker, len(first)))
        for key in KEYS:  # what a Redis restart without its data looks like to a worker
            await redis.delete(key)
        await asyncio.sleep(0.3)
        await produce(redis, later)
        await wait_until(lambda: _rows(worker, len(first) + len(later)))
        worker.stop("test")
        await asyncio.wait_for(task, 30)

    assert await table_counts(settings.database_url) == expected_counts(first + later)
    errors = [r for r in caplog.records if r.getMessage().startswith("consumer group missing")]
    assert errors and errors[0].levelno == logging.ERROR
    for key in KEYS:
        assert [g["name"] for g in await redis.xinfo_groups(key)] == [stream.GROUP.encode()]


async def _rows(worker: Worker, expected: int) -> bool:
    return worker.summary.rows >= expected


async def test_shard_count_comes_from_redis(redis, settings):
    await redis.set(stream.SHARDS_KEY, 2)
    messages = report_messages("two-shards", NOW - 20)
    key = stream.sample_stream(stream.shard_for("two-shards", 2))
    for kind, row in messages:
        await redis.xadd(key, stream.encode(kind, row))

    worker = await run_burst(settings.with_overrides(shards=8))

    assert worker.consumer.shards == 2
    assert worker.summary.rows == len(messages)
    assert not await redis.exists(stream.sample_stream(5))


async def test_consumers_gone_for_good_are_forgotten_but_not_those_holding_entries(redis,
                                                                                    settings):
    await create_groups(redis)
    await produce(redis, report_messages("holder", NOW - 20))
    await read_as(redis, "holds-entries")
    for key in KEYS:  # a consumer that holds nothing (e.g. it acknowledged all it read)
        await redis.xgroup_createconsumer(key, stream.GROUP, "left-empty")
    await asyncio.sleep(0.1)
    commands = connect(settings.redis_url, 5)
    try:
        consumer = GroupConsumer(commands, commands, "me", SHARDS)
        removed = await consumer.delete_idle_consumers(min_idle_ms=50)
        names = {c["name"] for key in KEYS
                 for c in await redis.xinfo_consumers(key, stream.GROUP)}
    finally:
        await commands.aclose()
    assert removed == ["left-empty"]
    assert b"holds-entries" in names and b"left-empty" not in names
