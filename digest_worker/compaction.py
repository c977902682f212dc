"""Storage upkeep: compact closed hours of per-process samples into history rows, lossless.

The encodings and their decoders are in ``migrations/0004_compacted_history.sql`` (OS
processes) and ``0005_compacted_group_history.sql`` (process_exporter groups, the same
model). For each kind, this job:

- **Compacts** every hour that ended at or before ``now - older_than`` (the hot window,
  ``PROCFLEET_HOT_WINDOW_H``, 2 h by default) and still has rows in ``process_points``. One
  transaction per hour: take the hour's hot rows out (``DELETE … RETURNING``), add the
  compacted rows the hour already has for the same servers (late samples, redeliveries), keep
  one sample per (key, ts), write one clock row per server and one history row per process.
  Commit or nothing: a worker killed (kill -9) or PostgreSQL restarted mid-hour leaves the
  hour as it was; the next run does it again. A transaction-level advisory lock per hour
  (``pg_try_advisory_xact_lock``) lets several workers run the job at once: an hour being
  compacted by one is skipped by the others.
- **Gives the disk back**: a past day's ``process_points`` partition whose rows are all
  compacted is TRUNCATEd (under its lock, only if still empty); the hours compacted today are
  deleted rows that VACUUM makes reusable for today's inserts.

- **Then applies the retention** of every tier (digest_worker/retention.py): day partitions
  dropped by tier, identities without history left expired. ``procfleet compact`` does it
  every run; the workers' ``CompactionJob`` once per ``retention_interval_s`` (hourly).

``procfleet compact`` runs it once; workers every ``INTERVAL_S`` (one at a time is enough,
but overlap is harmless).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from agent.errors import ProcfleetError
from digest_worker import partitions
from digest_worker.retention import Retention, RetentionReport, apply_retention

log = logging.getLogger(__name__)

HOT_WINDOW = timedelta(hours=2)
INTERVAL_S = 300.0
HOUR = timedelta(hours=1)
LOCK_CLASS = 0x70636D70  # "pcmp": advisory lock (class, hour number)
LOCK_TIMEOUT = "5s"
# The indexes of an empty day partition (btree metapage, BRIN metapage + revmap + range page)
# stay under this; above it, a compacted day's deleted index pages are worth a TRUNCATE.
EMPTY_INDEXES_BYTES = 65536

_STAGE = "compact_points"
_ENCODE = f"""
INSERT INTO process_history (key, ts, flags, slots, cpu, cpu_raw, rss, vsz, cpu_percent,
                             memory_percent, state)
SELECT x.key, $1,
       (CASE WHEN bool_and(x.rss_bytes IS NOT NULL) THEN 0 ELSE 1 END
        | CASE WHEN bool_and(x.vsz_bytes IS NOT NULL) THEN 0 ELSE 2 END
        | CASE WHEN bool_and(x.exact) THEN 0 ELSE 4 END)::smallint,
       array_agg(x.slot - x.prev_slot ORDER BY x.ts),
       CASE WHEN bool_and(x.exact) THEN array_agg(x.ticks - x.prev_ticks ORDER BY x.ts) END,
       CASE WHEN NOT bool_and(x.exact) THEN array_agg(x.cpu_seconds_total ORDER BY x.ts) END,
       CASE WHEN bool_and(x.rss_bytes IS NOT NULL)
            THEN array_agg(x.rss_bytes - x.prev_rss ORDER BY x.ts)
            ELSE array_agg(x.rss_bytes ORDER BY x.ts) END,
       CASE WHEN bool_and(x.vsz_bytes IS NOT NULL)
            THEN array_agg(x.vsz_bytes - x.prev_vsz ORDER BY x.ts)
            ELSE array_agg(x.vsz_bytes ORDER BY x.ts) END,
       CASE WHEN bool_or(x.cpu_percent IS NOT NULL)
            THEN array_agg(x.cpu_percent ORDER BY x.ts) END,
       CASE WHEN bool_or(x.memory_percent IS NOT NULL)
            THEN array_agg(x.memory_percent ORDER BY x.ts) END,
       CASE WHEN bool_or(x.state IS NOT NULL) THEN array_agg(x.state ORDER BY x.ts) END
FROM (
    SELECT y.*, coalesce(lag(y.slot) OVER w, 0) AS prev_slot,
           coalesce(lag(y.ticks) OVER w, 0) AS prev_ticks,
           coalesce(lag(y.rss_bytes) OVER w, 0) AS prev_rss,
           coalesce(lag(y.vsz_bytes) OVER w, 0) AS prev_vsz
    FROM (
        SELECT z.*, dense_rank() OVER (PARTITION BY z.server_id ORDER BY z.ts) AS slot,
               CASE WHEN abs(z.cpu_seconds_total) < 1e15
                    THEN round(z.cpu_seconds_total * 100)::bigint END AS ticks,
               coalesce(abs(z.cpu_seconds_total) < 1e15
                        AND round(z.cpu_seconds_total * 100) / 100 = z.cpu_seconds_total,
                        false) AS exact
        FROM (SELECT DISTINCT ON (t.key, t.ts) t.*, i.server_id
              FROM {_STAGE} t JOIN process_identities i ON i.key = t.key
              ORDER BY t.key, t.ts) z
    ) y
    WINDOW w AS (PARTITION BY y.key ORDER BY y.ts)
) x
GROUP BY x.key
"""


GROUP_FLOATS = ("cpu_user_seconds_total", "cpu_system_seconds_total")
GROUP_INTS = ("memory_resident_bytes", "memory_virtual_bytes", "memory_swapped_bytes",
              "read_bytes_total", "write_bytes_total", "major_page_faults_total",
              "minor_page_faults_total", "context_switches_voluntary_total",
              "context_switches_nonvoluntary_total", "num_procs", "num_threads", "open_fds")
_GROUP_STAGE = "compact_group_points"


def _group_encode_sql() -> str:
    """The group twin of ``_ENCODE`` (migrations/0005 documents the flags)."""
    flags = " | ".join(
        [f"CASE WHEN bool_and(x.{c} IS NOT NULL) THEN 0 ELSE {1 << i} END"
         for i, c in enumerate(GROUP_INTS)]
        + [f"CASE WHEN bool_and(x.{c}_exact) THEN 0 ELSE {1 << (12 + i)} END"
           for i, c in enumerate(GROUP_FLOATS)])
    arrays = (
        [f"CASE WHEN bool_and(x.{c}_exact) THEN array_agg(x.{c}_ticks - x.{c}_prev "
         f"ORDER BY x.ts) END" for c in GROUP_FLOATS]
        + [f"CASE WHEN NOT bool_and(x.{c}_exact) THEN array_agg(x.{c} ORDER BY x.ts) END"
           for c in GROUP_FLOATS]
        + [f"CASE WHEN bool_and(x.{c} IS NOT NULL) THEN array_agg(x.{c}::bigint - x.{c}_prev "
           f"ORDER BY x.ts) ELSE array_agg(x.{c}::bigint ORDER BY x.ts) END"
           for c in GROUP_INTS]
        + ["CASE WHEN bool_or(x.oldest_start_time IS NOT NULL) "
           "THEN array_agg(x.oldest_start_time ORDER BY x.ts) END"])
    lags = ", ".join(
        [f"coalesce(lag(y.{c}_ticks) OVER w, 0) AS {c}_prev" for c in GROUP_FLOATS]
        + [f"coalesce(lag(y.{c}::bigint) OVER w, 0) AS {c}_prev" for c in GROUP_INTS])
    ticks = ", ".join(
        f"CASE WHEN abs(z.{c}) < 1e15 THEN round(z.{c} * 100)::bigint END AS {c}_ticks, "
        f"coalesce(abs(z.{c}) < 1e15 AND round(z.{c} * 100) / 100 = z.{c}, false) AS {c}_exact"
        for c in GROUP_FLOATS)
    columns = ", ".join(["key", "ts", "flags", "slots", *GROUP_FLOATS,
                         *(f"{c}_raw" for c in GROUP_FLOATS), *GROUP_INTS,
                         "oldest_start_time"])
    return f"""
INSERT INTO process_group_history ({columns})
SELECT x.key, $1, ({flags})::integer, array_agg(x.slot - x.prev_slot ORDER BY x.ts),
       {", ".join(arrays)}
FROM (
    SELECT y.*, coalesce(lag(y.slot) OVER w, 0) AS prev_slot, {lags}
    FROM (
        SELECT z.*, dense_rank() OVER (PARTITION BY z.server_id ORDER BY z.ts) AS slot, {ticks}
        FROM (SELECT DISTINCT ON (t.key, t.ts) t.*, g.server_id
              FROM {_GROUP_STAGE} t JOIN process_groups g ON g.key = t.key
              ORDER BY t.key, t.ts) z
    ) y
    WINDOW w AS (PARTITION BY y.key ORDER BY y.ts)
) x
GROUP BY x.key
"""


@dataclass(frozen=True)
class Kind:
    """The tables of one kind of series (OS processes or process_exporter groups)."""

    name: str
    hot: str
    identities: str
    history: str
    clock: str
    decode: str
    stage: str
    encode: str
    lock_class: int


PROCESSES = Kind("processes", "process_points", "process_identities", "process_history",
                 "history_clock", "process_history_points", _STAGE, _ENCODE, LOCK_CLASS)
GROUPS = Kind("groups", "process_group_points", "process_groups", "process_group_history",
              "group_history_clock", "process_group_history_points", _GROUP_STAGE,
              _group_encode_sql(), LOCK_CLASS + 1)
KINDS = (PROCESSES, GROUPS)


class CompactionError(ProcfleetError):
    """An hour cannot be compacted without losing data (carries the hour)."""

    def __init__(self, hour: datetime, reason: str) -> None:
        self.hour = hour
        super().__init__(f"cannot compact the hour {hour.isoformat()}: {reason}")


@dataclass
class CompactionReport:
    """What one upkeep run did."""

    hours: list[datetime] = field(default_factory=list)
    group_hours: list[datetime] = field(default_factory=list)
    skipped_hours: list[datetime] = field(default_factory=list)
    samples: int = 0
    merged_samples: int = 0
    series: int = 0
    truncated: list[str] = field(default_factory=list)
    retention: RetentionReport | None = None  # None: the retention did not run
    duration_ms: float = 0.0

    def as_kv(self) -> dict[str, Any]:
        kv = {"hours": len(self.hours), "group_hours": len(self.group_hours),
              "skipped_hours": len(self.skipped_hours),
              "samples": self.samples, "merged_samples": self.merged_samples,
              "series": self.series, "truncated": len(self.truncated)}
        if self.retention is not None:
            kv.update(self.retention.as_kv())
        kv["duration_ms"] = round(self.duration_ms, 1)
        return kv


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def hours_to_compact(conn: asyncpg.Connection, before: datetime,
                           kind: Kind = PROCESSES) -> list[datetime]:
    """Hours that end at or before ``before`` and still have hot rows, oldest first."""
    rows = await conn.fetch(
        f"SELECT DISTINCT date_trunc('hour', ts) AS hour FROM {kind.hot} "
        f"WHERE ts < $1 ORDER BY 1", floor_hour(before))
    return [row["hour"] for row in rows]


async def compact_hour(conn: asyncpg.Connection, hour: datetime,
                       kind: Kind = PROCESSES) -> tuple[int, int, int] | None:
    """Compact ``hour`` (its hot rows plus what it already has compacted for their servers).
    Returns (hot samples, samples merged from the existing compacted rows, series), or None
    when another worker holds the hour."""
    end = hour + HOUR
    stage, ids = kind.stage, kind.identities
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {kind.hot}) "
                       f"ON COMMIT DELETE ROWS")
    async with conn.transaction():
        hour_number = int(hour.timestamp()) // 3600
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)",
                                   kind.lock_class, hour_number):
            return None
        status = await conn.execute(
            f"WITH hot AS (DELETE FROM {kind.hot} WHERE ts >= $1 AND ts < $2 RETURNING *) "
            f"INSERT INTO {stage} SELECT * FROM hot", hour, end)
        hot = int(status.rsplit(" ", 1)[1])
        if hot == 0:
            return 0, 0, 0
        orphans = await conn.fetchval(
            f"SELECT count(*) FROM {stage} t WHERE NOT EXISTS "
            f"(SELECT 1 FROM {ids} i WHERE i.key = t.key)")
        if orphans:
            raise CompactionError(hour, f"{orphans} {kind.name} samples have no identity row")
        servers = await conn.fetchval(
            f"SELECT array_agg(DISTINCT i.server_id) FROM {stage} t "
            f"JOIN {ids} i ON i.key = t.key")
        status = await conn.execute(
            f"INSERT INTO {stage} SELECT * FROM {kind.decode}($1, $2, $3) h "
            f"WHERE h.ts >= $1 AND h.ts < $2", hour, end, servers)
        merged = int(status.rsplit(" ", 1)[1])
        if merged:
            await conn.execute(
                f"DELETE FROM {kind.history} h USING {ids} i "
                f"WHERE h.ts = $1 AND i.key = h.key AND i.server_id = ANY($2)", hour, servers)
            await conn.execute(
                f"DELETE FROM {kind.clock} WHERE ts = $1 AND server_id = ANY($2)",
                hour, servers)
        await conn.execute(
            f"INSERT INTO {kind.clock} (server_id, ts, stamps) "
            f"SELECT i.server_id, $1, array_agg(DISTINCT t.ts ORDER BY t.ts) "
            f"FROM {stage} t JOIN {ids} i ON i.key = t.key GROUP BY i.server_id", hour)
        status = await conn.execute(kind.encode, hour)
        series = int(status.rsplit(" ", 1)[1])
    return hot, merged, series


async def truncate_compacted_days(conn: asyncpg.Connection, before: datetime,
                                  kind: Kind = PROCESSES) -> list[str]:
    """TRUNCATE the hot day partitions that end at or before ``before`` and hold no row any
    more (checked under an exclusive lock, so no late row is lost)."""
    truncated = []
    for day, name in sorted((await partitions.daily_partitions(conn, kind.hot)).items()):
        day_end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        if day_end > before:
            continue
        if not await conn.fetchval(
                "SELECT pg_relation_size($1::regclass) > 0 OR (SELECT sum(pg_relation_size("
                "x.indexrelid)) FROM pg_index x WHERE x.indrelid = $1::regclass) > $2",
                name, EMPTY_INDEXES_BYTES):
            continue  # already empty on disk
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name})"):
                continue  # late rows: the next compaction takes them first
            await conn.execute(f"TRUNCATE {name}")
        truncated.append(name)
    return truncated


async def run_storage_upkeep(conn: asyncpg.Connection, *, now: datetime | None = None,
                             older_than: timedelta = HOT_WINDOW, vacuum: bool = True,
                             retention: Retention | None = None,
                             ahead_days: int = 3) -> CompactionReport:
    """Compact every closed hour older than ``older_than``, give the disk back, then apply
    ``retention`` (None: skip it) as of ``now``'s UTC day."""
    started_s = time.monotonic()
    now = now or await conn.fetchval("SELECT now()")
    before = now - older_than
    report = CompactionReport()
    for kind in KINDS:
        compacted = False
        for hour in await hours_to_compact(conn, before, kind):
            done = await compact_hour(conn, hour, kind)
            if done is None or done[0] == 0:  # another worker holds it, or has just done it
                report.skipped_hours.append(hour)
                continue
            compacted = True
            if kind is PROCESSES:
                report.hours.append(hour)
            else:
                report.group_hours.append(hour)
            report.samples += done[0]
            report.merged_samples += done[1]
            report.series += done[2]
        report.truncated += await truncate_compacted_days(conn, floor_hour(before), kind)
        if vacuum and compacted:
            await conn.execute(f"VACUUM {kind.hot}")
    if retention is not None:
        report.retention = await apply_retention(conn, now.astimezone(UTC).date(), retention,
                                                 ahead_days)
    report.duration_ms = (time.monotonic() - started_s) * 1000
    if report.hours or report.group_hours or report.truncated:
        log.info("compaction", extra={"kv": report.as_kv()})
    return report


class CompactionJob:
    """The worker's periodic hook around ``run_storage_upkeep``: the compaction every run,
    the retention (``None``: never) at most every ``retention_interval_s``."""

    def __init__(self, pool: Any, *, older_than: timedelta = HOT_WINDOW,
                 retention: Retention | None = None, ahead_days: int = 3,
                 retention_interval_s: float = 3600.0) -> None:
        self.pool = pool
        self.older_than = older_than
        self.retention = retention
        self.ahead_days = ahead_days
        self.retention_interval_s = retention_interval_s
        self._next_retention_s = 0.0

    async def run(self) -> CompactionReport:
        due = self.retention is not None and time.monotonic() >= self._next_retention_s
        async with self.pool.acquire() as conn:
            report = await run_storage_upkeep(
                conn, older_than=self.older_than, ahead_days=self.ahead_days,
                retention=self.retention if due else None)
        if report.retention is not None and report.retention.ran:
            self._next_retention_s = time.monotonic() + self.retention_interval_s
        return report
