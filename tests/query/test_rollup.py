"""The rollup job: incremental, idempotent, late samples recomputed, one runner at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from digest_worker.rollup import LOCK_KEY, ROLLUP_TABLES, RollupJob, refresh_rollups
from ingest_gateway.query.params import TimeRange, TopParams
from ingest_gateway.query.top import top_processes
from tests.query.query_reference import top as reference_top
from tests.query.query_seed import (
    base_time,
    insert_groups,
    insert_processes,
    steady_group,
    steady_process,
)

pytestmark = pytest.mark.integration

TABLES = (*ROLLUP_TABLES, "rollup_watermarks")
# Cells with their keys spelled out (the tables hold dictionary ids, migrations/0006).
NAMED = {
    "rollup_minute": "k.source, k.server_id, k.name, c.* FROM rollup_minute c "
                     "JOIN rollup_series_names k USING (series_id)",
    "rollup_hour": "k.source, k.server_id, k.name, c.* FROM rollup_hour c "
                   "JOIN rollup_series_names k USING (series_id)",
    "rollup_fleet_minute": "k.source, k.name, c.* FROM rollup_fleet_minute c "
                           "JOIN rollup_names k USING (name_id)",
    "rollup_fleet_hour": "k.source, k.name, c.* FROM rollup_fleet_hour c "
                         "JOIN rollup_names k USING (name_id)",
}


async def table_contents(db) -> dict[str, list[tuple]]:
    contents = {}
    for table in TABLES:
        rows = await db.fetch(f"SELECT {NAMED.get(table, f'* FROM {table}')}")
        contents[table] = sorted(
            tuple(v for k, v in r.items() if k not in ("updated_at", "series_id", "name_id"))
            for r in rows)
    return contents


def rounded(contents: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """Float sums may differ in the last bits depending on the order of additions."""
    return {t: [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]
            for t, rows in contents.items()}


async def test_rerunning_changes_nothing(db):
    base = base_time()
    await insert_groups(db, steady_group("web-01", "nginx", base, 90, cores=0.5))
    await insert_processes(db, steady_process("web-01", "sshd", 22, base, 90))
    now = base + timedelta(hours=2)
    first = await refresh_rollups(db, now=now, retention_days=2, max_chunks=100)
    assert first.watermarks == {"groups": now - timedelta(minutes=1),
                                "processes": now - timedelta(minutes=1)}
    before = await table_contents(db)
    assert len(before["rollup_minute"]) == 2 * 91  # one cell per minute per name
    again = await refresh_rollups(db, now=now, retention_days=2, max_chunks=100)
    assert again.minutes == {"groups": 0, "processes": 0}
    assert await table_contents(db) == before


async def test_incremental_runs_equal_one_full_run(db):
    base = base_time()
    samples = []
    for server_id in ("web-01", "web-02"):
        samples += steady_group(server_id, "nginx", base - timedelta(minutes=3), 130,
                                cores=0.4, memory_mb=64)
        samples += steady_group(server_id, "app", base + timedelta(minutes=37), 50, cores=1.1)
    await insert_groups(db, samples)
    job = RollupJob(db, retention_days=2, max_chunks=100)
    now = base
    while now <= base + timedelta(hours=2, minutes=30):
        await job.refresh_rollups(now)
        now += timedelta(minutes=7)
    incremental = rounded(await table_contents(db))
    for table in TABLES:
        await db.execute(f"DELETE FROM {table}")
    await job.refresh_rollups(now - timedelta(minutes=7))
    assert rounded(await table_contents(db)) == incremental


async def test_dictionary_ids_are_not_spent_on_entries_that_exist(db):
    base = base_time()
    await insert_groups(db, steady_group("web-01", "nginx", base, 60)
                        + steady_group("web-02", "nginx", base, 60)
                        + steady_group("web-03", "nginx", base + timedelta(minutes=30), 30)
                        + steady_group("web-01", "redis", base + timedelta(minutes=40), 20))
    await insert_processes(db, steady_process("web-01", "nginx", 80, base, 60))
    job = RollupJob(db, retention_days=2, max_chunks=100)
    now = base + timedelta(minutes=5)
    while now <= base + timedelta(minutes=70):  # one minute per run, as a running worker
        await job.refresh_rollups(now)
        now += timedelta(minutes=1)
    names = await db.fetch("SELECT name_id, source, name FROM rollup_names ORDER BY name_id")
    series = await db.fetch("SELECT series_id, server_id FROM rollup_series_names "
                            "ORDER BY series_id")
    # Entries that appear later get the next ids: every run that met an existing entry left
    # the identity sequence alone (an int4 would otherwise run out in months).
    assert [tuple(r) for r in names] == [(1, "groups", "nginx"), (2, "processes", "nginx"),
                                         (3, "groups", "redis")]
    assert [tuple(r) for r in series][3:] == [(4, "web-03"), (5, "web-01")]


async def test_watermark_stays_behind_the_settle_delay(db):
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    report = await refresh_rollups(db, now=now, retention_days=1, settle_s=40, max_chunks=100)
    assert report.watermarks["groups"] == datetime(2026, 1, 1, 11, 59, tzinfo=UTC)


async def test_one_run_advances_at_most_max_chunks_hours(db):
    now = base_time() + timedelta(minutes=30)
    job = RollupJob(db, retention_days=1, max_chunks=3)
    report = await job.refresh_rollups(now)
    start = (now - timedelta(days=1)).replace(minute=0)
    assert report.watermarks["groups"] == start + timedelta(hours=3)


async def test_late_samples_are_recomputed(db):
    base = base_time()
    early = steady_group("web-01", "nginx", base - timedelta(minutes=5), 70, cores=0.5)
    await insert_groups(db, early)
    end = base + timedelta(hours=1)
    await refresh_rollups(db, now=end + timedelta(hours=1), retention_days=2, max_chunks=100)
    # An agent's spool replays an hour of a second server, and the first server's missing
    # samples of an outage arrive too: both are below the watermark already.
    late = steady_group("web-02", "nginx", base - timedelta(minutes=5), 70, cores=1.0)
    late += steady_group("web-01", "batch", base + timedelta(minutes=10), 20, cores=2.0)
    await insert_groups(db, late)
    assert await db.fetchval("SELECT count(*) FROM rollup_dirty") > 0
    report = await refresh_rollups(db, now=end + timedelta(hours=1), retention_days=2)
    assert report.late_minutes["groups"] > 0
    assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == 0
    params = TopParams(time_range=TimeRange(base, end), source="groups")
    rolled = await top_processes(db, params, path="rollup")
    raw = await top_processes(db, params, path="raw")
    assert rolled.processes == raw.processes
    expected = reference_top(early + late, "groups", base, end)
    assert [p["name"] for p in rolled.processes] == [p["name"] for p in expected]
    assert rolled.processes[0]["avg_cpu_percent"] == pytest.approx(150.0, abs=1e-3)


async def test_only_late_samples_are_marked(db):
    now = await db.fetchval("SELECT now()")
    await insert_groups(db, steady_group("web-01", "fresh", now, 0))
    assert await db.fetchval("SELECT count(*) FROM rollup_dirty") == 0
    await insert_groups(db, steady_group("web-01", "late", now - timedelta(hours=1), 0))
    rows = await db.fetch("SELECT source, server_id, ts FROM rollup_dirty")
    minute = (now - timedelta(hours=1)).replace(second=0, microsecond=0)
    assert [tuple(r) for r in rows] == [("groups", "web-01", minute)]


async def test_a_second_runner_skips_while_one_holds_the_lock(db, database_url):
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        report = await refresh_rollups(db, now=base_time(), retention_days=1)
        assert report.ran is False
        assert await db.fetchval("SELECT count(*) FROM rollup_watermarks") == 0
    finally:
        await other.close()


async def test_rollup_tables_get_daily_partitions(db):
    now = base_time()
    await refresh_rollups(db, now=now, retention_days=1, max_chunks=1)
    names = {r["relname"] for r in await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'rollup_minute'::regclass")}
    assert f"rollup_minute_p{now:%Y%m%d}" in names
    assert f"rollup_minute_p{now + timedelta(days=3):%Y%m%d}" in names
