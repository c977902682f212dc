"""Daily partitions: created ahead, rows of a day without partition rescued from the default
partition, days older than the retention dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from digest_worker.partitions import DAILY_TABLES, daily_partitions, partition_name, run_upkeep
from tests.support.worker import produce, report_messages, run_burst

pytestmark = pytest.mark.integration

TODAY = date(2026, 3, 10)


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
async def conn(migrated_database):
    connection = await asyncpg.connect(migrated_database)
    yield connection
    await connection.close()


async def insert_group_sample(conn, ts: datetime, name: str = "g") -> None:
    await conn.execute(
        "INSERT INTO process_group_samples (server_id, ts, name, num_procs, "
        "cpu_user_seconds_total, cpu_system_seconds_total, memory_resident_bytes) "
        "VALUES ('srv', $1, $2, 1, 1, 1, 1)", ts, name)


async def partition_of(conn, name: str) -> list[str]:
    return [r[0] for r in await conn.fetch(
        "SELECT p.tableoid::regclass::text FROM process_group_points p "
        "JOIN process_groups g USING (key) WHERE g.name = $1", name)]


async def test_upkeep_creates_one_partition_per_day_from_the_cutoff_to_ahead(conn):
    report = await run_upkeep(conn, TODAY, retention_days=7, ahead_days=3)

    expected_days = [TODAY + timedelta(days=n) for n in range(-7, 4)]
    for table in DAILY_TABLES:
        assert sorted(await daily_partitions(conn, table)) == expected_days
    assert len(report.created) == len(expected_days) * len(DAILY_TABLES)
    again = await run_upkeep(conn, TODAY, retention_days=7, ahead_days=3)
    assert again.ran and again.created == [] and again.dropped == []


async def test_row_for_a_day_without_partition_lands_in_default_then_moves(conn):
    await insert_group_sample(conn, at(TODAY - timedelta(days=2)), "early")
    await insert_group_sample(conn, at(TODAY - timedelta(days=2), 23), "late-same-day")
    assert await partition_of(conn, "early") == ["process_group_points_default"]

    report = await run_upkeep(conn, TODAY, retention_days=7, ahead_days=1)

    day_table = partition_name("process_group_points", TODAY - timedelta(days=2))
    assert await partition_of(conn, "early") == [day_table]
    assert await partition_of(conn, "late-same-day") == [day_table]
    assert report.moved_rows == 2
    assert await conn.fetchval("SELECT count(*) FROM process_group_points_default") == 0
    # the moved partition is a normal one: its key still refuses a duplicate
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert_group_sample(conn, at(TODAY - timedelta(days=2)), "early")


async def test_default_rows_past_the_retention_are_deleted_and_future_ones_kept(conn):
    await insert_group_sample(conn, at(TODAY - timedelta(days=30)), "expired")
    await insert_group_sample(conn, at(TODAY + timedelta(days=30)), "far-future")

    report = await run_upkeep(conn, TODAY, retention_days=7, ahead_days=3)

    assert (report.expired_default_rows, report.future_default_rows) == (1, 1)
    assert await partition_of(conn, "expired") == []
    assert await partition_of(conn, "far-future") == ["process_group_points_default"]


async def test_retention_drops_whole_days_older_than_retention_days(conn):
    await run_upkeep(conn, TODAY, retention_days=7, ahead_days=3)
    old_day, kept_day = TODAY - timedelta(days=6), TODAY - timedelta(days=2)
    await insert_group_sample(conn, at(old_day), "old")
    await insert_group_sample(conn, at(kept_day), "kept")

    later = TODAY + timedelta(days=5)  # cutoff: later - 7 days = TODAY - 2 days
    report = await run_upkeep(conn, later, retention_days=7, ahead_days=3)

    days = sorted(await daily_partitions(conn, "process_group_points"))
    assert days[0] == kept_day and days[-1] == later + timedelta(days=3)
    assert partition_name("process_group_points", old_day) in report.dropped
    assert await partition_of(conn, "old") == []
    assert await partition_of(conn, "kept") == [partition_name("process_group_points",
                                                               kept_day)]


async def test_two_upkeeps_at_once_do_not_collide(migrated_database):
    first, second = (await asyncpg.connect(migrated_database),
                     await asyncpg.connect(migrated_database))
    try:
        reports = await asyncio.gather(run_upkeep(first, TODAY, 7, 3),
                                       run_upkeep(second, TODAY, 7, 3))
        third = await run_upkeep(first, TODAY, 7, 3)
    finally:
        await first.close()
        await second.close()
    created = [name for report in reports for name in report.created]
    assert len(created) == len(set(created)) == 11 * len(DAILY_TABLES)
    assert third.created == []


async def test_worker_rows_far_in_the_future_are_kept_in_the_default_partition(redis,
                                                                               settings):
    future = datetime.now(UTC) + timedelta(days=40)
    messages = report_messages("clock-ahead", future.timestamp(), processes=3)
    await produce(redis, messages)

    worker = await run_burst(settings)

    assert worker.summary.inserted == len(messages)
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM process_points_default") == 3
    finally:
        await conn.close()


async def test_a_tier_kept_longer_than_rows_arrive_creates_only_recent_days(conn):
    # (the rollup tiers: hour cells kept 400 days, samples 14) kept 30 days, created from 3
    # days back; a row waiting in the default partition for an older retained day still
    # gets its own partition
    await insert_group_sample(conn, at(TODAY - timedelta(days=20)))

    report = await run_upkeep(conn, TODAY, 30, 1, tables=("process_group_points",),
                              create_back_days=3)

    days = sorted(await daily_partitions(conn, "process_group_points"))
    assert days == [TODAY - timedelta(days=20)] + [
        TODAY + timedelta(days=n) for n in range(-3, 2)]
    assert report.moved_rows == 1
    assert await conn.fetchval("SELECT count(*) FROM process_group_points_default") == 0
