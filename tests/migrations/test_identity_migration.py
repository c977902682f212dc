"""Migration 0003: an existing deployment's samples survive the move to identities + points,
and the database's keys are the worker's keys."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from digest_worker.identity import group_key, process_key
from migrations.runner import discover, migrate

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 23, 59, 30, 250_001, tzinfo=UTC)  # spans two days
PROCESS_COLUMNS = ("server_id", "ts", "pid", "start_time", "ppid", "username", "name",
                   "command", "state", "cpu_seconds_total", "cpu_percent", "memory_percent",
                   "rss_bytes", "vsz_bytes", "tty", "session_name", "session_id")
GROUP_COLUMNS = ("server_id", "ts", "name", "num_procs", "cpu_user_seconds_total",
                 "cpu_system_seconds_total", "memory_resident_bytes", "read_bytes_total",
                 "oldest_start_time")


def old_process_rows() -> list[tuple]:
    rows = []
    server = "9f2c1d7e4b8a4c55a1e0d3b6c7f81234"  # a 32-character machine id
    for i in range(8):
        ts = T0 + timedelta(seconds=15 * i)
        # pid 100 reused: a second process with a later start time
        rows.append((server, ts, 100, T0 - timedelta(days=2), 1, "root", "nginx",
                     "nginx: master process /usr/sbin/nginx -g daemon on;", "S",
                     12.5 + i * 0.01, 0.1, 0.2, 4096 * (1000 + i), 8192 * 1000, None, None,
                     None))
        rows.append((server, ts, 100, T0 - timedelta(seconds=1), 1, "app", "python3",
                     "python3 -m worker --queue=é", "R", 0.5 * i, None, None, None, None,
                     "pts/0", "Console", 3))
    rows.append(("tasklist-host", T0, 4, datetime(1970, 1, 1, tzinfo=UTC), None, None,
                 "System", "", None, 1.0, None, None, 1, None, None, "Services", 0))
    return rows


def old_group_rows() -> list[tuple]:
    return [("srv-a", T0 + timedelta(seconds=15 * i), "postgres", 3, 10.0 + i, 2.0 + i,
             2**40 + i, 7 * i, T0 - timedelta(days=1)) for i in range(5)]


async def test_old_samples_are_converted_exactly_and_keys_match_the_worker(fresh_database,
                                                                          tmp_path):
    url = await fresh_database()
    for migration in discover():
        if migration.version <= 2:
            shutil.copy(migration.path, tmp_path / migration.path.name)
    await migrate(url, tmp_path)
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("process_samples", records=old_process_rows(),
                                         columns=PROCESS_COLUMNS)
        await conn.copy_records_to_table("process_group_samples", records=old_group_rows(),
                                         columns=GROUP_COLUMNS)
        order = "ORDER BY server_id, pid, start_time, ts"
        before = [tuple(r) for r in await conn.fetch(
            f"SELECT * FROM process_samples {order}")]
        groups_before = [tuple(r) for r in await conn.fetch(
            "SELECT * FROM process_group_samples ORDER BY server_id, name, ts")]

        await migrate(url)

        after = [tuple(r) for r in await conn.fetch(f"SELECT * FROM process_samples {order}")]
        assert after == before and len(after) == 17
        assert [tuple(r) for r in await conn.fetch(
            "SELECT * FROM process_group_samples ORDER BY server_id, name, ts")] == groups_before
        identities = await conn.fetch(
            "SELECT key, server_id, pid, start_time, first_seen, last_seen "
            "FROM process_identities ORDER BY server_id, pid, start_time")
        assert len(identities) == 3
        for row in identities:
            assert row["key"] == process_key(row["server_id"], row["pid"],
                                             row["start_time"].timestamp())
            assert row["key"] == process_key(row["server_id"], row["pid"],
                                             row["start_time"].isoformat())
        nginx = identities[0]
        assert (nginx["first_seen"], nginx["last_seen"]) == (T0, T0 + timedelta(seconds=105))
        [group] = await conn.fetch("SELECT key, server_id, name FROM process_groups")
        assert group["key"] == group_key("srv-a", "postgres")
        # the converted days got their partitions: nothing waits in the default ones
        assert await conn.fetchval("SELECT count(*) FROM process_points_default") == 0
        assert sorted(r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'process_points'::regclass")) == [
            "process_points_default", "process_points_p20260301", "process_points_p20260302"]
    finally:
        await conn.close()
