"""Retention per tier (digest_worker/retention.py): day partitions dropped by tier, identities
expired with their history (live ones kept, concurrent writers safe), a late replay after
the expiry landing again, and ``procfleet compact`` applying it all."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from digest_worker.compaction import CompactionJob, run_storage_upkeep
from digest_worker.partitions import daily_partitions, run_upkeep
from digest_worker.retention import (
    HISTORY_TABLES,
    HOUR_TABLES,
    MINUTE_TABLES,
    ROLLUP_TABLES,
    Retention,
    apply_retention,
    expire_identities,
)
from digest_worker.writer import BatchWriter
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

NOW = datetime.now(UTC)
TODAY = NOW.date()
TIERS = Retention(3, 5, 8)
CUTOFF = TIERS.history_cutoff(TODAY)  # 00:00 UTC three days ago
SERVER = "9f2c1d7e4b8a4c55a1e0d3b6c7f81234"


def sample(ts: datetime, pid: int, name: str, cpu: float = 1.0) -> tuple:
    t = ts.timestamp()
    return ("p", (SERVER, t, pid, 1_700_000_000.0 + pid, 1, "root", name, f"/usr/bin/{name}",
                  "S", cpu, None, None, 4096, 8192, None, None, None))


def scrape(ts: datetime, name: str) -> tuple:
    return ("g", (SERVER, ts.timestamp(), name, 1, 1.0, 0.5, 4096, None, None, None, None,
                  None, None, None, None, None, None, None))


def every_15s(start: datetime, count: int, make) -> list[tuple]:
    return [make(start + timedelta(seconds=15 * i)) for i in range(count)]


@pytest.fixture
async def conn(migrated_database):
    connection = await asyncpg.connect(migrated_database)
    # ten days of partitions in every tier, so that each tier has days to drop
    await run_upkeep(connection, TODAY, 10, 1, tables=HISTORY_TABLES + ROLLUP_TABLES)
    yield connection
    await connection.close()


async def new_writer(conn: asyncpg.Connection) -> BatchWriter:
    writer = BatchWriter("copy")
    await writer.prepare(conn)
    return writer


async def seed(conn: asyncpg.Connection, writer: BatchWriter) -> None:
    """An old process and group (5 days ago), a process whose last sample is 30 s before the
    cutoff, and a live process and group (3 h ago); then everything compacted."""
    old = datetime.combine(TODAY - timedelta(days=5), datetime.min.time(), UTC) + timedelta(
        hours=12)
    messages = (every_15s(old, 40, lambda t: sample(t, 1, "old"))
                + every_15s(old, 40, lambda t: scrape(t, "oldgroup"))
                + every_15s(CUTOFF - timedelta(minutes=10), 39, lambda t: sample(t, 2, "edge"))
                + every_15s(NOW - timedelta(hours=3), 40, lambda t: sample(t, 3, "live"))
                + every_15s(NOW - timedelta(hours=3), 40, lambda t: scrape(t, "livegroup")))
    await writer.commit(conn, messages)
    report = await run_storage_upkeep(conn, now=NOW)
    assert report.retention is None and CUTOFF - timedelta(hours=1) in report.hours


async def names(conn: asyncpg.Connection, table: str = "process_identities") -> list[str]:
    return sorted(r["name"] for r in await conn.fetch(f"SELECT name FROM {table}"))


async def test_each_tier_drops_its_own_days(conn):
    report = await apply_retention(conn, TODAY, TIERS, ahead_days=1)

    for tables, days in ((HISTORY_TABLES, 3), (MINUTE_TABLES, 5), (HOUR_TABLES, 8)):
        for table in tables:
            kept = await daily_partitions(conn, table)
            assert min(kept) == TODAY - timedelta(days=days), table
            assert max(kept) == TODAY + timedelta(days=1), table
            assert sum(name.startswith(f"{table}_p") for name in report.dropped) == 10 - days
    again = await apply_retention(conn, TODAY, TIERS, ahead_days=1)
    assert again.dropped == [] and again.created == []


async def test_rollup_tiers_create_no_partition_older_than_the_samples(migrated_database):
    conn = await asyncpg.connect(migrated_database)
    try:
        await apply_retention(conn, TODAY, Retention(3, 30, 400), ahead_days=1)
        for table in ROLLUP_TABLES + HISTORY_TABLES:
            assert min(await daily_partitions(conn, table)) == TODAY - timedelta(days=3), table
    finally:
        await conn.close()


async def test_identities_expire_with_their_history_and_live_ones_stay(conn):
    writer = await new_writer(conn)
    await seed(conn, writer)
    assert await names(conn) == ["edge", "live", "old"]
    assert await names(conn, "process_names") == ["edge", "live", "old"]

    report = await run_storage_upkeep(conn, now=NOW, retention=TIERS, ahead_days=1)

    assert report.retention is not None
    assert (report.retention.expired_identities, report.retention.expired_groups) == (2, 1)
    assert await names(conn) == ["live"]
    # /api/processes/new forgets a name whose whole history expired
    assert report.retention.forgotten_names == 2
    assert await names(conn, "process_names") == ["live"]
    # and the search's dictionary forgets their names and command lines
    assert report.retention.forgotten_texts == 4
    assert sorted(r["text"] for r in await conn.fetch("SELECT text FROM process_texts")) == [
        "/usr/bin/live", "live"]
    assert await names(conn, "process_groups") == ["livegroup"]
    assert await conn.fetchval("SELECT count(*) FROM process_samples") == 40
    assert await conn.fetchval("SELECT count(*) FROM process_group_samples") == 40


async def test_an_identity_with_history_left_is_kept_whatever_its_last_seen(conn):
    writer = await new_writer(conn)
    await seed(conn, writer)
    # last_seen behind its samples (the old view path moves it in 10-minute steps)
    await conn.execute("UPDATE process_identities SET last_seen = $1 WHERE name = 'live'",
                       CUTOFF - timedelta(days=1))

    await apply_retention(conn, TODAY, TIERS, ahead_days=1)

    assert await names(conn) == ["live"]


async def test_a_sample_replayed_after_its_identity_expired_lands_again(conn):
    writer = await new_writer(conn)  # remembers "edge" as written: its cache is warm
    await seed(conn, writer)
    await apply_retention(conn, TODAY, TIERS, ahead_days=1)
    assert "edge" not in await names(conn)

    # a spooled sample of "edge", 10 s after the cutoff (within 45 s of its last sample)
    replay = sample(CUTOFF + timedelta(seconds=10), 2, "edge", cpu=2.0)
    await writer.commit(conn, [replay])

    assert await names(conn) == ["edge", "live"]
    report = await run_storage_upkeep(conn, now=NOW, retention=TIERS, ahead_days=1)
    assert report.hours == [CUTOFF] and report.retention.expired_identities == 0
    rows = await conn.fetch("SELECT ts, name, cpu_seconds_total FROM process_samples "
                            "WHERE pid = 2")
    assert [tuple(r) for r in rows] == [(CUTOFF + timedelta(seconds=10), "edge", 2.0)]


async def test_an_identity_being_upserted_by_a_writer_is_not_expired(conn, migrated_database):
    writer = await new_writer(conn)
    await seed(conn, writer)
    for days in (4, 5):  # the old days' samples and history gone, identities still there
        for table in ("process_points", "process_history", "process_group_points",
                      "process_group_history"):
            await conn.execute(f"DROP TABLE {table}_p{TODAY - timedelta(days=days):%Y%m%d}")
    other = await asyncpg.connect(migrated_database)
    try:
        replaying = await new_writer(other)
        # A writer is replaying a sample of "edge" and has not committed yet (its batch runs
        # in a transaction held open here): its identity upsert holds the row.
        transaction = other.transaction()
        await transaction.start()
        await replaying.commit(other, [sample(CUTOFF + timedelta(seconds=20), 2, "edge")])

        assert await expire_identities(conn, CUTOFF) == (1, 1)  # "old" and "oldgroup" only

        await transaction.commit()
    finally:
        await other.close()
    assert await names(conn) == ["edge", "live"]
    assert await conn.fetchval("SELECT count(*) FROM process_samples WHERE pid = 2") == 1


async def test_a_writer_waiting_on_an_expiry_inserts_the_identity_afresh(conn,
                                                                        migrated_database):
    writer = await new_writer(conn)
    await seed(conn, writer)
    other = await asyncpg.connect(migrated_database)
    try:
        # The expiry's batch has locked and deleted "edge", not committed yet (its two
        # statements, held open here) ...
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SELECT key FROM process_identities WHERE name = 'edge' FOR UPDATE")
        await conn.execute("DELETE FROM process_identities WHERE name = 'edge'")
        # ... while a writer replays a sample of it: its upsert waits on the row.
        replaying = await new_writer(other)
        task = asyncio.create_task(replaying.commit(
            other, [sample(CUTOFF + timedelta(seconds=20), 2, "edge")]))
        pid = other.get_server_pid()
        watcher = await asyncpg.connect(migrated_database)
        try:
            await wait_until(lambda: watcher.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid),
                "the writer waiting on the identity's row")
        finally:
            await watcher.close()
        await transaction.commit()
        await task  # no collision error: the identity is inserted afresh
    finally:
        await other.close()
    assert await names(conn) == ["edge", "live", "old"]
    assert await conn.fetchval("SELECT last_seen FROM process_identities WHERE pid = 2") == (
        CUTOFF + timedelta(seconds=20))


async def test_the_workers_job_applies_the_retention_once_per_interval(conn, migrated_database):
    writer = await new_writer(conn)
    await seed(conn, writer)
    pool = await asyncpg.create_pool(migrated_database, min_size=1, max_size=1)
    try:
        job = CompactionJob(pool, retention=TIERS, ahead_days=1, retention_interval_s=3600)
        first, second = await job.run(), await job.run()
    finally:
        await pool.close()
    assert first.retention is not None and first.retention.expired_identities == 2
    assert second.retention is None  # not due again within the hour
    assert await names(conn) == ["live"]


async def test_procfleet_compact_applies_every_tier_and_exits_0(conn, migrated_database):
    writer = await new_writer(conn)
    await seed(conn, writer)
    env = {**os.environ, "PROCFLEET_RETENTION_DAYS": "3",
           "PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS": "5",
           "PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS": "8", "PROCFLEET_PARTITIONS_AHEAD_DAYS": "1"}
    command = [sys.executable, "-m", "procfleet", "compact", "--older-than", "2h",
               "--database-url", migrated_database]

    done = await asyncio.to_thread(subprocess.run, command, cwd=REPO, capture_output=True,
                                   text=True, timeout=120, env=env)

    assert done.returncode == 0, done.stderr
    assert "expired_identities=2 expired_groups=1" in done.stdout
    assert f"dropped_partitions={7 * 7 + 2 * 5 + 2 * 2} " in done.stdout
    assert min(await daily_partitions(conn, "rollup_minute")) == TODAY - timedelta(days=5)
    assert await names(conn) == ["live"]


def test_procfleet_compact_refuses_tiers_that_do_not_nest():
    env = {**os.environ, "PROCFLEET_RETENTION_DAYS": "14",
           "PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS": "7"}
    done = subprocess.run([sys.executable, "-m", "procfleet", "compact"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS" in done.stderr and "7" in done.stderr
