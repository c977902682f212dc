"""Storage upkeep: compact closed hours of per-process samples into history rows, lossless.

The encoding and its decoder are in ``migrations/0004_compacted_history.sql``. This job:

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


class CompactionError(ProcfleetError):
    """An hour cannot be compacted without losing data (carries the hour)."""

    def __init__(self, hour: datetime, reason: str) -> None:
        self.hour = hour
        super().__init__(f"cannot compact the hour {hour.isoformat()}: {reason}")


@dataclass
class CompactionReport:
    """What one upkeep run did."""

    hours: list[datetime] = field(default_factory=list)
    skipped_hours: list[datetime] = field(default_factory=list)
    samples: int = 0
    merged_samples: int = 0
    series: int = 0
    truncated: list[str] = field(default_factory=list)
    duration_ms: float = 0.0

    def as_kv(self) -> dict[str, Any]:
        return {"hours": len(self.hours), "skipped_hours": len(self.skipped_hours),
                "samples": self.samples, "merged_samples": self.merged_samples,
                "series": self.series, "truncated": len(self.truncated),
                "duration_ms": round(self.duration_ms, 1)}


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def hours_to_compact(conn: asyncpg.Connection, before: datetime) -> list[datetime]:
    """Hours that end at or before ``before`` and still have hot rows, oldest first."""
    rows = await conn.fetch(
        "SELECT DISTINCT date_trunc('hour', ts) AS hour FROM process_points "
        "WHERE ts < $1 ORDER BY 1", floor_hour(before))
    return [row["hour"] for row in rows]


async def compact_hour(conn: asyncpg.Connection, hour: datetime) -> tuple[int, int, int] | None:
    """Compact ``hour`` (its hot rows plus what it already has compacted for their servers).
    Returns (hot samples, samples merged from the existing compacted rows, series), or None
    when another worker holds the hour."""
    end = hour + HOUR
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE process_points) "
                       f"ON COMMIT DELETE ROWS")
    async with conn.transaction():
        hour_number = int(hour.timestamp()) // 3600
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)",
                                   LOCK_CLASS, hour_number):
            return None
        status = await conn.execute(
            f"WITH hot AS (DELETE FROM process_points WHERE ts >= $1 AND ts < $2 RETURNING *) "
            f"INSERT INTO {_STAGE} SELECT * FROM hot", hour, end)
        hot = int(status.rsplit(" ", 1)[1])
        if hot == 0:
            return 0, 0, 0
        orphans = await conn.fetchval(
            f"SELECT count(*) FROM {_STAGE} t WHERE NOT EXISTS "
            f"(SELECT 1 FROM process_identities i WHERE i.key = t.key)")
        if orphans:
            raise CompactionError(hour, f"{orphans} samples have no identity row")
        servers = await conn.fetchval(
            f"SELECT array_agg(DISTINCT i.server_id) FROM {_STAGE} t "
            f"JOIN process_identities i ON i.key = t.key")
        status = await conn.execute(
            f"INSERT INTO {_STAGE} SELECT * FROM process_history_points($1, $2, $3) h "
            f"WHERE h.ts >= $1 AND h.ts < $2", hour, end, servers)
        merged = int(status.rsplit(" ", 1)[1])
        if merged:
            await conn.execute(
                "DELETE FROM process_history h USING process_identities i "
                "WHERE h.ts = $1 AND i.key = h.key AND i.server_id = ANY($2)", hour, servers)
            await conn.execute("DELETE FROM history_clock WHERE ts = $1 AND server_id = ANY($2)",
                               hour, servers)
        await conn.execute(
            f"INSERT INTO history_clock (server_id, ts, stamps) "
            f"SELECT i.server_id, $1, array_agg(DISTINCT t.ts ORDER BY t.ts) "
            f"FROM {_STAGE} t JOIN process_identities i ON i.key = t.key GROUP BY i.server_id",
            hour)
        status = await conn.execute(_ENCODE, hour)
        series = int(status.rsplit(" ", 1)[1])
    return hot, merged, series


async def truncate_compacted_days(conn: asyncpg.Connection, before: datetime) -> list[str]:
    """TRUNCATE the ``process_points`` day partitions that end at or before ``before`` and
    hold no row any more (checked under an exclusive lock, so no late row is lost)."""
    truncated = []
    for day, name in sorted((await partitions.daily_partitions(conn, "process_points")).items()):
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
                             older_than: timedelta = HOT_WINDOW,
                             vacuum: bool = True) -> CompactionReport:
    """Compact every closed hour older than ``older_than``, then give the disk back."""
    started_s = time.monotonic()
    now = now or await conn.fetchval("SELECT now()")
    before = now - older_than
    report = CompactionReport()
    for hour in await hours_to_compact(conn, before):
        done = await compact_hour(conn, hour)
        if done is None or done[0] == 0:  # another worker holds it, or has just done it
            report.skipped_hours.append(hour)
            continue
        report.hours.append(hour)
        report.samples += done[0]
        report.merged_samples += done[1]
        report.series += done[2]
    report.truncated = await truncate_compacted_days(conn, floor_hour(before))
    if vacuum and report.hours:
        await conn.execute("VACUUM process_points")
    report.duration_ms = (time.monotonic() - started_s) * 1000
    if report.hours or report.truncated:
        log.info("compaction", extra={"kv": report.as_kv()})
    return report


class CompactionJob:
    """The worker's periodic hook around ``run_storage_upkeep``."""

    def __init__(self, pool: Any, *, older_than: timedelta = HOT_WINDOW) -> None:
        self.pool = pool
        self.older_than = older_than

    async def run(self) -> CompactionReport:
        async with self.pool.acquire() as conn:
            return await run_storage_upkeep(conn, older_than=self.older_than)
