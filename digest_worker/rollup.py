"""Incremental rollups: per-minute and per-hour cells of the samples, per server and fleet-wide.

The tables and the SQL that computes a minute cell (rates with LAG, counter resets, gaps)
are in ``migrations/0002_rollups.sql``; the query API reads the same functions for its raw
path, so the two paths agree by construction. This job only moves data:

- **Advance.** Per source (groups, processes), roll up the complete minutes between the
  watermark (``rollup_watermarks.minute_until``) and ``now - SETTLE_S``, at most one hour per
  transaction and ``max_chunks`` hours per run. Each transaction writes the minute cells,
  recomputes the fleet minutes, merges the new minutes into the hour cells, recomputes the
  fleet hours it touched, and moves the watermark — all or nothing. Re-running changes
  nothing: the watermark says what is done.
- **Late samples.** A statement trigger records (source, server, minute) of samples that
  arrived more than ``rollup_late_after()`` (10 s) after their timestamp (agent spool
  replays, a worker catching up). Each run first recomputes those minutes of those servers
  that are below the watermark, with the next minutes whose first delta may change
  (``LATE_REACH``); minutes above it are simply left to the advance.
- **Keys.** Cells are keyed by small integers (migrations/0006): ``rollup_names`` gives a
  (source, name) its ``name_id`` (the fleet tables' key), ``rollup_series`` a (name, server)
  its ``series_id`` (the per-server tables' key). The job adds the entries it lacks as it
  writes the cells; readers join ``rollup_series_names``.
- **Partitions.** The rollup tables are partitioned by day like the samples; the job runs
  the partition upkeep of their tiers hourly (create ahead, drop minute cells past
  ``PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS``, hour cells past
  ``PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS``: digest_worker/retention.py). A first run rolls
  up from the start of the per-process history (``retention_days``): nothing is older.

Concurrency: one job at a time across every worker (``pg_try_advisory_lock``; the others
skip the run). Hook: the worker calls ``RollupJob.refresh_rollups`` every ``INTERVAL_S``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from digest_worker import retention as _retention

log = logging.getLogger(__name__)

INTERVAL_S = 15.0
# Minutes younger than this are not rolled up yet; must exceed rollup_late_after() (10 s)
# plus the longest insert transaction, so that a sample not marked late is always visible to
# the run that rolls up its minute.
SETTLE_S = 40.0
CHUNK = timedelta(hours=1)
MAX_CHUNKS_PER_RUN = 6
# A late sample changes its own minute and the first delta after it (at most
# rollup_max_rate_gap() = 120 s later): recompute 3 minutes from its minute.
LATE_REACH = timedelta(minutes=3)
UPKEEP_INTERVAL_S = 3600.0
LOCK_KEY = 0x70726F63726F6C  # "procrol"
SOURCES = ("groups", "processes")
MINUTE_FUNCTIONS = {"groups": "rollup_group_minutes", "processes": "rollup_process_minutes"}
ROLLUP_TABLES = _retention.ROLLUP_TABLES
CELL_COLUMNS = ("samples", "cpu_seconds", "cpu_core_minutes", "memory_byte_minutes",
                "memory_peak_bytes", "num_procs_minutes")
_AGGREGATES = ", ".join(
    f"max({c})" if c == "memory_peak_bytes" else f"sum({c})" for c in CELL_COLUMNS)
_FLEET_AGGREGATES = ", ".join(f"sum({c})" for c in CELL_COLUMNS)
_COLUMNS = ", ".join(CELL_COLUMNS)


@dataclass
class RollupReport:
    """What one run did; ``ran`` is False when another worker held the job's lock."""

    ran: bool = True
    minutes: dict[str, int] = field(default_factory=dict)
    late_minutes: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, datetime | None] = field(default_factory=dict)
    duration_ms: float = 0.0

    def as_kv(self) -> dict[str, Any]:
        kv: dict[str, Any] = {"duration_ms": round(self.duration_ms, 1)}
        for source in SOURCES:
            kv[f"{source}_minutes"] = self.minutes.get(source, 0)
            kv[f"{source}_late_minutes"] = self.late_minutes.get(source, 0)
            mark = self.watermarks.get(source)
            kv[f"{source}_watermark"] = mark.isoformat() if mark else "none"
        return kv


def floor_to(moment: datetime, step: timedelta) -> datetime:
    step_s = int(step.total_seconds())
    epoch_s = int(moment.timestamp())
    return datetime.fromtimestamp(epoch_s - epoch_s % step_s, UTC)


class RollupJob:
    """Keeps the rollup tables up to date; ``pool`` is an asyncpg pool (or a connection)."""

    def __init__(self, pool: Any, *, retention_days: int = _retention.DEFAULT_HISTORY_DAYS,
                 minute_retention_days: int | None = None,
                 hour_retention_days: int | None = None, partitions_ahead_days: int = 3,
                 settle_s: float = SETTLE_S, max_chunks: int = MAX_CHUNKS_PER_RUN) -> None:
        self.pool = pool
        # retention_days: the per-process history's (the samples the rollups are made of)
        self.retention_days = retention_days
        self.retention = _retention.Retention(retention_days, minute_retention_days,
                                              hour_retention_days)
        self.partitions_ahead_days = partitions_ahead_days
        self.settle_s = settle_s
        self.max_chunks = max_chunks
        self._next_upkeep_s = 0.0

    async def refresh_rollups(self, now: datetime | None = None) -> RollupReport:
        """One run: partition upkeep (hourly), advance every source, redo late minutes.
        ``now`` defaults to the database clock (the one the late-sample trigger uses)."""
        if isinstance(self.pool, asyncpg.Connection):
            return await self._run(self.pool, now)
        async with self.pool.acquire() as conn:
            return await self._run(conn, now)

    async def _run(self, conn: asyncpg.Connection, now: datetime | None) -> RollupReport:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            return RollupReport(ran=False)
        started_s = time.monotonic()
        report = RollupReport()
        try:
            now = now or await conn.fetchval("SELECT now()")
            if time.monotonic() >= self._next_upkeep_s:
                upkeep = await _retention.partition_upkeep(
                    conn, now.date(), self.retention, self.partitions_ahead_days,
                    tables=ROLLUP_TABLES)
                if upkeep.ran:
                    self._next_upkeep_s = time.monotonic() + UPKEEP_INTERVAL_S
            target = floor_to(now - timedelta(seconds=self.settle_s), timedelta(minutes=1))
            backfill_from = floor_to(now - timedelta(days=self.retention_days), CHUNK)
            for source in SOURCES:
                # Late minutes first: a late sample of a minute the advance is about to read
                # is then read once, not rolled up and then recomputed.
                mark = await conn.fetchval(
                    "SELECT minute_until FROM rollup_watermarks WHERE source = $1", source)
                report.late_minutes[source] = await self._redo_late(conn, source, mark)
                mark, minutes = await self._advance(conn, source, mark, target, backfill_from)
                report.minutes[source] = minutes
                report.watermarks[source] = mark
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        report.duration_ms = (time.monotonic() - started_s) * 1000
        if any(report.minutes.values()) or any(report.late_minutes.values()):
            log.info("rollup", extra={"kv": report.as_kv()})
        return report

    async def _advance(self, conn: asyncpg.Connection, source: str, mark: datetime | None,
                       target: datetime, backfill_from: datetime) -> tuple[datetime | None, int]:
        start = mark or backfill_from
        done = 0
        for _ in range(self.max_chunks):
            if start >= target:
                break
            end = min(target, floor_to(start, CHUNK) + CHUNK)
            async with conn.transaction():
                await roll_minutes(conn, source, start, end, None)
                await conn.execute(
                    "INSERT INTO rollup_watermarks (source, minute_until) VALUES ($1, $2) "
                    "ON CONFLICT (source) DO UPDATE SET minute_until = EXCLUDED.minute_until, "
                    "updated_at = now()", source, end)
            done += int((end - start).total_seconds() // 60)
            start = mark = end
        return mark, done

    async def _redo_late(self, conn: asyncpg.Connection, source: str,
                         mark: datetime | None) -> int:
        """Recompute the minutes of late samples that are already rolled up."""
        async with conn.transaction():
            rows = await conn.fetch(
                "WITH taken AS (DELETE FROM rollup_dirty WHERE source = $1 "
                "RETURNING server_id, ts) SELECT DISTINCT server_id, ts FROM taken", source)
            if mark is None:
                return 0
            ranges: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
            for row in sorted(rows, key=lambda r: (r["server_id"], r["ts"])):
                start = row["ts"]
                if start >= mark:
                    continue  # not rolled up yet: the advance will read it
                end = min(start + LATE_REACH, mark)
                spans = ranges[row["server_id"]]
                if spans and start <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], max(spans[-1][1], end))
                else:
                    spans.append((start, end))
            # One pass per distinct span, for every server that has it (an outage replay
            # makes many servers late over the same minutes).
            servers_by_span: dict[tuple[datetime, datetime], list[str]] = defaultdict(list)
            for server_id, spans in ranges.items():
                for span in spans:
                    servers_by_span[span].append(server_id)
            minutes = 0
            for (start, end), server_ids in sorted(servers_by_span.items()):
                await roll_minutes(conn, source, start, end, server_ids, merge_hours=False)
                minutes += int((end - start).total_seconds() // 60) * len(server_ids)
            return minutes


# The cells of a minute function with their dictionary keys (migrations/0006): names and
# series the dictionaries lack are added first (only those, so identity values are not spent
# on conflicts; the job's lock makes it the only writer), then the cells refer to them, in
# key order: a series' cells of a chunk land side by side and their index pages stay full
# (docs/BENCHMARKS.md "Storage").
_INSERT_MINUTES = f"""
WITH c AS MATERIALIZED (SELECT * FROM {{function}}($2, $3, {{servers}})),
added_names AS (
    INSERT INTO rollup_names (source, name)
    SELECT DISTINCT $1, c.name FROM c
    WHERE NOT EXISTS (SELECT 1 FROM rollup_names n WHERE n.source = $1 AND n.name = c.name)
    ON CONFLICT DO NOTHING RETURNING name_id, name
), names AS (
    SELECT name_id, name FROM added_names
    UNION ALL SELECT name_id, name FROM rollup_names WHERE source = $1
), added_series AS (
    INSERT INTO rollup_series (name_id, server_id)
    SELECT DISTINCT n.name_id, c.server_id FROM c JOIN names n USING (name)
    WHERE NOT EXISTS (SELECT 1 FROM rollup_series s
                      WHERE s.name_id = n.name_id AND s.server_id = c.server_id)
    ON CONFLICT DO NOTHING RETURNING series_id, name_id, server_id
), series AS (
    SELECT series_id, name_id, server_id FROM added_series
    UNION ALL SELECT series_id, name_id, server_id FROM rollup_series
)
INSERT INTO rollup_minute (series_id, ts, {_COLUMNS})
SELECT s.series_id, c.ts, {", ".join(f"c.{col}" for col in CELL_COLUMNS)}
FROM c JOIN names n USING (name) JOIN series s ON s.name_id = n.name_id
                                              AND s.server_id = c.server_id
ORDER BY s.series_id, c.ts"""
# The cells of one source (and, with $4, of some servers) in [$2, $3).
_SERIES = ("series_id IN (SELECT k.series_id FROM rollup_series_names k "
           "WHERE k.source = $1{servers})")


async def roll_minutes(conn: asyncpg.Connection, source: str, start: datetime, end: datetime,
                       server_ids: list[str] | None, *, merge_hours: bool = True) -> None:
    """(Re)compute the rollup of ``[start, end)`` (whole minutes) for ``server_ids`` (None:
    all). ``merge_hours`` adds the new minutes to the hour cells — the advance, whose minutes
    were never counted; when minute cells were already there (or for late samples) the
    touched hours are recomputed from the minute cells instead."""
    function = MINUTE_FUNCTIONS[source]
    series = _SERIES.format(
        servers="" if server_ids is None else " AND k.server_id = ANY($4::text[])")
    args: list[Any] = [source, start, end] + ([] if server_ids is None else [server_ids])
    status = await conn.execute(
        f"DELETE FROM rollup_minute WHERE {series} AND ts >= $2 AND ts < $3", *args)
    replaced = int(status.rsplit(" ", 1)[1])
    await conn.execute(_INSERT_MINUTES.format(
        function=function, servers="NULL" if server_ids is None else "$4::text[]"), *args)
    await rebuild_fleet(conn, "rollup_fleet_minute", "rollup_minute", source, start, end)
    hour_start = floor_to(start, CHUNK)
    hour_end = floor_to(end - timedelta(seconds=1), CHUNK) + CHUNK
    hours_of_minutes = (
        f"INSERT INTO rollup_hour (series_id, ts, {_COLUMNS}) "
        f"SELECT series_id, date_trunc('hour', ts), {_AGGREGATES} "
        f"FROM rollup_minute WHERE {series} AND ts >= $2 AND ts < $3 "
        f"GROUP BY series_id, date_trunc('hour', ts)")
    if merge_hours and not replaced:
        await conn.execute(
            f"{hours_of_minutes} ON CONFLICT (series_id, ts) DO UPDATE SET "
            + ", ".join(
                f"{c} = greatest(rollup_hour.{c}, EXCLUDED.{c})" if c == "memory_peak_bytes"
                else f"{c} = rollup_hour.{c} + EXCLUDED.{c}" for c in CELL_COLUMNS),
            *args)
    else:
        hour_args = [source, hour_start, hour_end] + args[3:]
        await conn.execute(
            f"DELETE FROM rollup_hour WHERE {series} AND ts >= $2 AND ts < $3", *hour_args)
        await conn.execute(hours_of_minutes, *hour_args)
    await rebuild_fleet(conn, "rollup_fleet_hour", "rollup_hour", source, hour_start, hour_end)


async def rebuild_fleet(conn: asyncpg.Connection, fleet_table: str, table: str, source: str,
                        start: datetime, end: datetime) -> None:
    """Recompute the cross-server sums of ``[start, end)`` from the per-server table (in
    key order: the right end of the source's range of the index, whose pages stay full)."""
    await conn.execute(
        f"DELETE FROM {fleet_table} WHERE source_code = rollup_source_code($1) "
        f"AND ts >= $2 AND ts < $3", source, start, end)
    await conn.execute(
        f"INSERT INTO {fleet_table} (source_code, name_id, ts, servers, {_COLUMNS}) "
        f"SELECT rollup_source_code($1), k.name_id, c.ts, count(*), {_FLEET_AGGREGATES} "
        f"FROM {table} c JOIN rollup_series_names k USING (series_id) "
        f"WHERE k.source = $1 AND c.ts >= $2 AND c.ts < $3 GROUP BY k.name_id, c.ts "
        f"ORDER BY c.ts, k.name_id",
        source, start, end)


async def refresh_rollups(pool: Any, *, now: datetime | None = None,
                          **options: Any) -> RollupReport:
    """One run of a fresh ``RollupJob`` (tests, one-off catch-up)."""
    return await RollupJob(pool, **options).refresh_rollups(now)
