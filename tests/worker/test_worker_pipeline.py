"""Stream entries in, table rows out: every row once, duplicates absorbed, poison isolated."""

from __future__ import annotations

import gc
import logging
import time
from datetime import UTC, datetime

import asyncpg
import pytest

from digest_worker import worker as worker_module
from digest_worker.redis_client import connect
from digest_worker.streams import GroupConsumer
from ingest_gateway import stream
from tests.support.worker import (
    SHARDS,
    expected_counts,
    produce,
    produce_raw,
    report_messages,
    run_burst,
    stream_state,
    table_counts,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).timestamp()


async def test_burst_worker_lands_every_row_and_empties_the_streams(redis, settings):
    messages = [m for host in range(6) for m in report_messages(f"host-{host}", NOW - 60)]
    await produce(redis, messages)

    worker = await run_burst(settings)

    assert await table_counts(settings.database_url) == expected_counts(messages)
    assert await stream_state(redis) == {"length": 0, "pending": 0}
    assert worker.summary.rows == len(messages)
    assert worker.summary.inserted == len(messages)
    assert worker.summary.duplicates == worker.summary.dead_lettered == 0


def as_rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


async def test_rows_keep_every_column_and_the_start_time_sentinel(redis, settings):
    ts = 1_790_000_000.25
    tasklist_process = ("p", ("win-1", ts, 4242, None, None, None, "svchost.exe", "", None,
                              None, None, None, 12_345_678, None, None, "Services", 0))
    await produce(redis, [*report_messages("win-1", ts, processes=1), tasklist_process])

    await run_burst(settings)

    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM process_samples WHERE pid = 4242")
        server = await conn.fetchrow("SELECT * FROM servers")
        group = await conn.fetchrow("SELECT * FROM process_group_samples LIMIT 1")
    finally:
        await conn.close()
    assert row["start_time"] == datetime(1970, 1, 1, tzinfo=UTC)
    assert row["ts"] == datetime.fromtimestamp(ts, UTC)
    assert (row["name"], row["rss_bytes"], row["session_name"], row["session_id"]) == (
        "svchost.exe", 12_345_678, "Services", 0)
    assert (server["server_id"], server["hostname"], server["os_type"], server["boot_id"]) == (
        "win-1", "win-1.example", "linux", "boot-1")
    assert server["last_seen_at"] == server["metadata_at"] == datetime.fromtimestamp(ts, UTC)
    assert group["oldest_start_time"] == datetime.fromtimestamp(ts - 3600, UTC)


async def test_same_messages_twice_are_absorbed_as_duplicates(redis, settings):
    messages = report_messages("dup-host", NOW - 30, processes=20)
    await produce(redis, messages)
    await produce(redis, messages)  # a gateway retry after a partial failure

    worker = await run_burst(settings)

    counts = await table_counts(settings.database_url)
    assert counts == expected_counts(messages)
    host_messages = 1
    assert worker.summary.duplicates == len(messages) - host_messages
    assert worker.summary.inserted == len(messages) + host_messages


@pytest.mark.parametrize("method", ["copy", "staging", "unnest"])
async def test_redelivered_batch_inserts_nothing_new_with_every_method(redis, settings, method):
    messages = report_messages("again", NOW - 30, processes=50)
    await produce(redis, messages)
    await run_burst(settings, insert_method=method)
    await produce(redis, messages)

    worker = await run_burst(settings, insert_method=method)

    assert await table_counts(settings.database_url) == expected_counts(messages)
    assert worker.summary.inserted == 1  # the host message refreshes servers
    assert worker.summary.duplicates == len(messages) - 1


async def test_poison_entries_are_dead_lettered_while_the_rest_lands(redis, settings, caplog):
    good = [m for host in range(3) for m in report_messages(f"ok-{host}", NOW - 10)]
    await produce(redis, good[:10])
    bad_version = await produce_raw(redis, "ok-0", {b"m": b'[99,"p"]'})
    not_json = await produce_raw(redis, "ok-0", {b"m": b"{nope"})
    await produce(redis, good[10:20])
    wrong_type = (await produce(redis, [("p", ("ok-0", NOW - 10, "not-a-pid", None, *[None] * 2,
                                                "x", "", *[None] * 9))]))[0]
    nul_byte = (await produce(redis, [("p", ("ok-0", NOW - 10, 7, None, None, None,
                                              "bad\x00name", "", *[None] * 9))]))[0]
    await produce(redis, good[20:])

    with caplog.at_level(logging.INFO, logger="digest_worker"):
        worker = await run_burst(settings)

    assert await table_counts(settings.database_url) == expected_counts(good)
    assert worker.summary.dead_lettered == 4
    # all four on the shard of "ok-0" (entry ids are unique within one stream only)
    dead = {fields[b"original_id"]: fields[b"reason"].decode() for _id, fields in
            await redis.xrange(stream.dead_letter_stream(stream.shard_for("ok-0", SHARDS)))}
    assert set(dead) == {bad_version, not_json, wrong_type, nul_byte}
    assert "not a schema 2 message" in dead[bad_version]
    assert "unreadable payload" in dead[not_json]
    assert dead[wrong_type].startswith("cannot insert: ")
    assert "CharacterNotInRepertoire" in dead[nul_byte]
    errors = [r for r in caplog.records if r.getMessage() == "entry dead-lettered"]
    assert len(errors) == 4 and all(r.levelno == logging.ERROR for r in errors)
    assert {r.kv["id"].encode() for r in errors} == set(dead)
    assert await stream_state(redis) == {"length": 0, "pending": 0}


async def test_dead_letter_keeps_the_original_fields(redis, settings):
    entry_id = await produce_raw(redis, "h", {b"v": b"1", b"d": b"[\"zz\"]", b"extra": b"x"})

    await run_burst(settings)

    shard = stream.shard_for("h", SHARDS)
    [(_id, fields)] = await redis.xrange(stream.dead_letter_stream(shard))
    assert fields[b"original_id"] == entry_id
    assert fields[b"d"] == b"[\"zz\"]" and fields[b"extra"] == b"x"
    assert fields[b"deliveries"] == b"1"
    assert fields[b"consumer"] == settings.consumer_name.encode()


async def test_start_batch_and_stop_lines(redis, settings, caplog):
    await produce(redis, report_messages("logs", NOW - 5, processes=3))
    secret = settings.database_url.replace("postgres@", "postgres:hunter2@")
    with caplog.at_level(logging.INFO, logger="digest_worker"):
        worker = await run_burst(settings, database_url=secret)

    by_msg: dict[str, list] = {}
    for record in caplog.records:
        by_msg.setdefault(record.getMessage(), []).append(record)
    start = by_msg["worker started"][0]
    assert "hunter2" not in str(start.kv) and "postgres:***@" in start.kv["database_url"]
    assert start.kv["consumer"] == settings.consumer_name and start.kv["batch_size"] == 500
    [batch] = [r.kv for r in by_msg["batch"]]
    assert batch.keys() == {"rows", "inserted", "duplicates", "dead_lettered", "handed_back",
                            "insert_ms", "backlog"}
    assert (batch["rows"], batch["inserted"], batch["duplicates"], batch["backlog"]) == (
        7, 7, 0, 0)
    stopped = by_msg["worker stopped"][0].kv
    assert stopped["reason"] == "burst" and stopped["rows"] == worker.summary.rows == 7
    assert {"batches", "inserted", "duplicates", "dead_lettered", "uptime_s"} <= set(stopped)


async def test_summary_line_reports_rate_lag_backlog_and_pending(redis, settings, caplog):
    await produce(redis, report_messages("lagging", NOW - 5, processes=3))
    worker = await run_burst(settings)
    await produce(redis, report_messages("lagging", NOW - 4, processes=3))
    commands = connect(settings.redis_url, 5)
    worker.consumer = GroupConsumer(commands, commands, "observer", SHARDS)
    try:
        with caplog.at_level(logging.INFO, logger="digest_worker"):
            stats = await worker.report()
    finally:
        await commands.aclose()

    [line] = [r for r in caplog.records if r.getMessage() == "summary"]
    assert line.kv.keys() == {"rows_per_s", "lag_s", "pending", "backlog", "batches"}
    assert line.kv["backlog"] == 7 and line.kv["pending"] == 0 and line.kv["batches"] == 1
    assert 0 <= line.kv["lag_s"] < 60
    assert sum(s["backlog"] for s in stats.values()) == 7


@pytest.mark.parametrize("automatic", [False, True])
async def test_a_worker_collects_on_its_timer_only_without_automatic_collections(
        redis, settings, monkeypatch, automatic):
    collections = []

    async def counted() -> None:
        collections.append(time.monotonic())

    monkeypatch.setattr(worker_module, "GC_INTERVAL_S", 0.01)
    monkeypatch.setattr(worker_module, "collect_garbage", counted)
    await produce(redis, report_messages("gc-host", NOW - 60))
    if not automatic:
        gc.disable()  # what tune_gc() does in a worker process
    try:
        worker = await run_burst(settings)
    finally:
        gc.enable()
    assert worker.summary.rows > 0
    assert bool(collections) is not automatic


async def test_a_far_future_collected_at_never_moves_last_seen_at_past_the_clock(redis,
                                                                                  settings):
    # A host whose clock is ahead must not stay "fresh" forever: its samples keep their ts,
    # its sighting stops at the clock of the worker that writes it.
    far_future = datetime.now(UTC).timestamp() + 30 * 86_400
    await produce(redis, report_messages("clock-ahead", far_future, processes=2))

    await run_burst(settings)
    written_by = time.time()

    conn = await asyncpg.connect(settings.database_url)
    try:
        server = await conn.fetchrow("SELECT * FROM servers WHERE server_id = 'clock-ahead'")
        newest_sample = await conn.fetchval("SELECT max(ts) FROM process_samples")
    finally:
        await conn.close()
    assert server["last_seen_at"].timestamp() <= written_by
    assert server["metadata_at"].timestamp() <= written_by
    assert server["first_seen_at"] <= server["last_seen_at"]
    assert newest_sample.timestamp() == pytest.approx(far_future, abs=1e-3)
