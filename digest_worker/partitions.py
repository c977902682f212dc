"""Daily partitions of the time-series tables: create ahead, rescue the default partition,
drop what is older than the retention.

The choice, and why:

- **Ahead of time.** Upkeep runs when a worker starts and every ``upkeep_interval_s``
  (hourly). It makes sure a partition exists for every UTC day from the retention cutoff to
  ``today + ahead_days``, so a normal row, or a row replayed from an agent's spool a few days
  late, always finds its day.
- **The default partition catches the rest, and nothing is lost.** A row for a day without a
  partition (a clock far ahead, a day created by nobody yet) lands in ``<table>_default``. The
  writer never runs DDL itself: DDL in the hot path would queue behind, and block, the
  inserts of every other worker. Upkeep then *moves* such rows: in one transaction it locks
  the default partition, creates the day's table (``LIKE`` the parent), moves the day's rows
  into it (``DELETE … RETURNING`` into ``INSERT``) and attaches it. Creating the partition
  directly would fail ("updated partition constraint for default partition would be
  violated"). Rows in the default partition older than the cutoff are deleted (they are
  past the retention anyway); rows for days beyond ``today + ahead_days`` stay there until
  their day comes within range.
- **Gentle locks.** New partitions are created with ``CREATE TABLE … (LIKE …)`` + ``ATTACH
  PARTITION`` (SHARE UPDATE EXCLUSIVE on the parent, which does not block inserts) rather
  than ``CREATE TABLE … PARTITION OF`` (ACCESS EXCLUSIVE). Each table is handled in its own
  short transactions under ``lock_timeout``, and only one worker at a time does upkeep
  (``pg_try_advisory_lock``; the others skip).
- **Retention is DROP TABLE** of the partitions whose whole day is older than
  ``today - retention_days``: no DELETE, no vacuum debt. Each tier has its own retention
  (digest_worker/retention.py calls this per tier).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

log = logging.getLogger(__name__)

DAILY_TABLES = ("process_points", "process_group_points", "snapshots", "process_history",
                "history_clock", "process_group_history", "group_history_clock")
# Storage parameters a new day partition gets (LIKE does not copy them): compacted history
# rows of a few hundred bytes are compressed too (migrations/0004).
STORAGE_PARAMETERS = {"process_history": "toast_tuple_target = 128",
                      "process_group_history": "toast_tuple_target = 128"}
UPKEEP_LOCK_KEY = 0x70726F63757063  # "procupc"
LOCK_TIMEOUT = "5s"


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def default_partition(table: str) -> str:
    return f"{table}_default"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


@dataclass
class UpkeepReport:
    """What one upkeep run changed (partition names), and whether it ran at all."""

    ran: bool = True
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved_rows: int = 0
    expired_default_rows: int = 0
    future_default_rows: int = 0


async def daily_partitions(conn: asyncpg.Connection, table: str) -> dict[date, str]:
    """The day partitions of ``table`` that follow our naming, by day."""
    pattern = re.compile(rf"^{re.escape(table)}_p(\d{{8}})$")
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass", table,
    )
    found = {}
    for row in rows:
        match = pattern.match(row["relname"])
        if match:
            found[datetime.strptime(match[1], "%Y%m%d").date()] = row["relname"]
    return found


async def run_upkeep(
    conn: asyncpg.Connection, today: date, retention_days: int, ahead_days: int,
    tables: tuple[str, ...] = DAILY_TABLES, *, create_back_days: int | None = None,
) -> UpkeepReport:
    """Create, rescue and drop partitions of ``tables`` around ``today`` (UTC): days older
    than ``retention_days`` are dropped; partitions are created from ``create_back_days``
    ago (default: the retention; less for a tier kept longer than rows can arrive for)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", UPKEEP_LOCK_KEY):
        return UpkeepReport(ran=False)
    try:
        report = UpkeepReport()
        cutoff = today - timedelta(days=retention_days)
        first = today - timedelta(days=min(retention_days, create_back_days or retention_days))
        last = today + timedelta(days=ahead_days)
        for table in tables:
            await _upkeep_table(conn, table, cutoff, first, last, report)
        if (report.created or report.dropped or report.moved_rows or report.expired_default_rows
                or report.future_default_rows):
            log.info("partition upkeep", extra={"kv": {
                "created": len(report.created), "dropped": len(report.dropped),
                "moved_rows": report.moved_rows,
                "expired_default_rows": report.expired_default_rows,
                "future_default_rows": report.future_default_rows}})
        return report
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", UPKEEP_LOCK_KEY)


async def _upkeep_table(conn: asyncpg.Connection, table: str, cutoff: date, first: date,
                        last: date, report: UpkeepReport) -> None:
    existing = await daily_partitions(conn, table)
    default = default_partition(table)
    # Days that have rows waiting in the default partition.
    waiting = {
        row["day"]: row["n"] for row in await conn.fetch(
            f"SELECT (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM {default} "
            f"GROUP BY 1"
        )
    }
    # Days from ``first`` on, and any retained day that has rows waiting.
    days = {first + timedelta(days=n) for n in range((last - first).days + 1)}
    days |= {day for day in waiting if cutoff <= day <= last}
    for day in sorted(days):
        if day not in existing:
            report.moved_rows += await _create_partition(
                conn, table, day, move=waiting.get(day, 0) > 0)
            report.created.append(partition_name(table, day))
    for day, count in waiting.items():
        if day < cutoff:
            report.expired_default_rows += count
        elif day > last:
            report.future_default_rows += count
        elif day in existing:  # cannot happen: the partition would have taken the rows
            log.warning("rows in default partition for an existing day",
                        extra={"kv": {"table": table, "day": str(day), "rows": count}})
    if any(day < cutoff for day in waiting):
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute(f"DELETE FROM {default} WHERE ts < $1", _bounds(cutoff)[0])
    for day, name in sorted(existing.items()):
        if day < cutoff:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await conn.execute(f"DROP TABLE {name}")
            report.dropped.append(name)


async def _create_partition(conn: asyncpg.Connection, table: str, day: date,
                            move: bool) -> int:
    """Create and attach the partition of ``day``, first moving its rows out of the default
    partition when ``move``. Returns the number of rows moved."""
    name = partition_name(table, day)
    start, end = _bounds(day)
    moved = 0
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if move:
            # Nobody may add a row for this day to the default partition until it is attached.
            await conn.execute(f"LOCK TABLE {default_partition(table)} IN ACCESS EXCLUSIVE MODE")
        await conn.execute(
            f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING COMPRESSION)")
        if table in STORAGE_PARAMETERS:
            await conn.execute(f"ALTER TABLE {name} SET ({STORAGE_PARAMETERS[table]})")
        # The CHECK lets ATTACH skip scanning the new table to prove the bounds.
        await conn.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds "
            f"CHECK (ts >= '{start.isoformat()}' AND ts < '{end.isoformat()}')"
        )
        if move:
            status = await conn.execute(
                f"WITH moved AS (DELETE FROM {default_partition(table)} "
                f"WHERE ts >= $1 AND ts < $2 RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                start, end,
            )
            moved = int(status.rsplit(" ", 1)[1])
        await conn.execute(
            f"ALTER TABLE {table} ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds")
    if moved:
        log.info("rows moved out of the default partition",
                 extra={"kv": {"table": table, "partition": name, "rows": moved}})
    return moved
