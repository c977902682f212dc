"""Migration 0006: an existing deployment's rollup cells survive the move to dictionary keys
exactly, keep their day partitions, and the rollup job goes on from them."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from digest_worker import partitions
from digest_worker.rollup import ROLLUP_TABLES, roll_minutes
from migrations.runner import discover, migrate
from tests.query.query_seed import insert_groups, steady_group

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 23, 58, tzinfo=UTC)  # spans two days
SERVER = "9f2c1d7e4b8a4c55a1e0d3b6c7f81234"  # a 32-character machine id
# Values no rounding would keep: float8 must come back bit for bit.
ODD = (1 / 3, 0.1 + 0.2, 2.0**53 + 2, 5e-324, 1.7976931348623157e308)
VALUES = ("samples", "cpu_seconds", "cpu_core_minutes", "memory_byte_minutes",
          "memory_peak_bytes", "num_procs_minutes")


def cells(fleet: bool) -> list[tuple]:
    rows = []
    keys = [("groups", SERVER, "postgres"), ("processes", SERVER, "postgres"),
            ("processes", "web-01", "python3 é"), ("groups", "web-01", "nginx")]
    for i, (source, server_id, name) in enumerate(keys):
        for minute in range(4):
            ts = T0 + timedelta(minutes=minute)
            values = (4 + i, *(v * (minute + 1) for v in ODD))
            rows.append((source, name, ts, 2, *values) if fleet
                        else (source, server_id, name, ts, *values))
    return rows


def spelled(table: str) -> str:
    """The cells of ``table`` (a table or a subquery) with their keys as text, in order."""
    if "fleet" in table:
        return (f"SELECT source, name, ts, servers, {', '.join(VALUES)} FROM {table} "
                f"ORDER BY source, name, ts")
    return (f"SELECT source, server_id, name, ts, {', '.join(VALUES)} FROM {table} "
            f"ORDER BY source, server_id, name, ts")


async def test_rollup_cells_are_converted_exactly(fresh_database, tmp_path):
    url = await fresh_database()
    for migration in discover():
        if migration.version <= 5:
            shutil.copy(migration.path, tmp_path / migration.path.name)
    await migrate(url, tmp_path)
    conn = await asyncpg.connect(url)
    try:
        # Day partitions as the rollup job makes them; 2026-03-02 has none: the default
        # partition holds its cells.
        await partitions.run_upkeep(conn, date(2026, 3, 1), 1, 0, tables=ROLLUP_TABLES)
        for table in ROLLUP_TABLES:
            fleet = "fleet" in table
            columns = (["source", "name", "ts", "servers"] if fleet
                       else ["source", "server_id", "name", "ts"]) + list(VALUES)
            await conn.copy_records_to_table(table, records=cells(fleet), columns=columns)
        await conn.execute("INSERT INTO rollup_watermarks (source, minute_until) "
                           "VALUES ('groups', $1)", T0 + timedelta(minutes=4))
        before = {t: [tuple(r) for r in await conn.fetch(spelled(t))] for t in ROLLUP_TABLES}
        days = {t: sorted(await partitions.daily_partitions(conn, t)) for t in ROLLUP_TABLES}

        await migrate(url)

        for table in ROLLUP_TABLES:
            view = (f"(SELECT * FROM {table} JOIN rollup_names USING (name_id)) c"
                    if "fleet" in table else
                    f"(SELECT * FROM {table} JOIN rollup_series_names USING (series_id)) c")
            after = [tuple(r) for r in await conn.fetch(spelled(view))]
            assert after == before[table] and len(after) == 16, table
            assert sorted(await partitions.daily_partitions(conn, table)) == days[table]
        assert await conn.fetchval("SELECT count(*) FROM rollup_minute_default") == 8
        assert await conn.fetchval("SELECT count(*) FROM rollup_series") == 4
        assert await conn.fetchval("SELECT count(*) FROM rollup_names") == 4

        # The job goes on from the converted cells: same series, and the hour it merges a
        # new minute into is the converted one.
        minute = T0 + timedelta(minutes=4)
        await insert_groups(conn, steady_group("web-01", "nginx", minute - timedelta(
            minutes=2), 2.75))
        hour_before = await conn.fetchrow(
            "SELECT c.* FROM rollup_hour c JOIN rollup_series_names k USING (series_id) "
            "WHERE k.server_id = 'web-01' AND k.name = 'nginx' AND c.ts = $1",
            minute.replace(minute=0))
        await roll_minutes(conn, "groups", minute, minute + timedelta(minutes=1), None)
        assert await conn.fetchval("SELECT count(*) FROM rollup_series") == 4
        hour_after = await conn.fetchrow(
            "SELECT * FROM rollup_hour WHERE series_id = $1 AND ts = $2",
            hour_before["series_id"], hour_before["ts"])
        assert hour_after["samples"] == hour_before["samples"] + 4
        assert await conn.fetchval(
            "SELECT minute_until FROM rollup_watermarks WHERE source = 'groups'") == minute
    finally:
        await conn.close()
