"""Bytes on disk per process sample, per tier: today's schema and the current one, same data.

    python bench/bench_storage.py [--hosts 2] [--processes 300] [--groups 25] [--hours 24]
                                  [--interval-s 15] [--hot-h 2] [--quick]

Seeds the same fleet (bench/fleet_day.py: idle/light/busy mix, churn, restarts, 32-character
machine ids, ~90-character command lines, clock-tick CPU) into two databases:

- ``before``: migrations 0001–0002 only (one wide row per sample), rows COPYed as the old
  writer did, rollups with text keys as the 0002 job wrote them;
- ``after``: every migration, rows written by the digest writer (digest_worker/writer.py).

then runs the upkeep each schema has (the rollup job; for ``after`` also the storage upkeep
of ``procfleet compact --older-than <hot-h>h`` when it exists: compaction, partition drops),
VACUUMs, and prints the bytes on disk (heap + indexes + TOAST, every partition) per process
sample for each tier and in total. The seeded hours end at the last UTC midnight and the
upkeep runs at least ``--hot-h`` later, so every seeded hour is closed: the figures are those
of any day but today in a running fleet (today also holds the hot window's rows, ~130 B a
sample, for ``--hot-h`` hours: docs/BENCHMARKS.md adds them).

Uses an EmbeddedPostgres in a temp dir unless ``DATABASE_URL`` is set (then two scratch
databases are created on that server and dropped at the end).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.fleet_day import FleetDay  # noqa: E402
from bench.postgres import run_on_postgres, scratch_database  # noqa: E402
from digest_worker import partitions  # noqa: E402
from digest_worker.rollup import (  # noqa: E402
    CELL_COLUMNS,
    MINUTE_FUNCTIONS,
    ROLLUP_TABLES,
    RollupJob,
)
from digest_worker.timestamps import install_codec  # noqa: E402
from digest_worker.writer import BatchWriter  # noqa: E402
from migrations.runner import discover, migrate  # noqa: E402

OLD_TABLES = {"p": "process_samples", "g": "process_group_samples", "s": "snapshots"}
OLD_COLUMNS = {
    "p": ("server_id", "ts", "pid", "start_time", "ppid", "username", "name", "command",
          "state", "cpu_seconds_total", "cpu_percent", "memory_percent", "rss_bytes",
          "vsz_bytes", "tty", "session_name", "session_id"),
    "g": ("server_id", "ts", "name", "num_procs", "cpu_user_seconds_total",
          "cpu_system_seconds_total", "memory_resident_bytes", "memory_virtual_bytes",
          "memory_swapped_bytes", "num_threads", "open_fds", "read_bytes_total",
          "write_bytes_total", "major_page_faults_total", "minor_page_faults_total",
          "context_switches_voluntary_total", "context_switches_nonvoluntary_total",
          "oldest_start_time"),
    "s": ("server_id", "ts", "source", "sha256", "process_count", "unparsed_lines",
          "raw_output"),
}
# Tier -> tables, per schema. A table holding per-process rows is per-process history.
TIERS = {
    "before": {
        "process history": ("process_samples",),
        "group history": ("process_group_samples",),
        "rollups": ("rollup_minute", "rollup_hour", "rollup_fleet_minute",
                    "rollup_fleet_hour"),
        "snapshots, servers": ("snapshots", "servers"),
    },
    "after": {
        "process history": ("process_identities", "process_points", "process_history",
                            "history_clock"),
        "group history": ("process_groups", "process_group_points", "process_group_history",
                          "group_history_clock"),
        "rollups": ("rollup_minute", "rollup_hour", "rollup_fleet_minute",
                    "rollup_fleet_hour", "rollup_names", "rollup_series"),
        "snapshots, servers": ("snapshots", "servers"),
    },
}
BATCH_REPORTS = 8


async def relation_bytes(conn: asyncpg.Connection, table: str) -> int:
    """Heap + indexes + TOAST of ``table`` and of every partition under it (0 if absent).
    pg_partition_tree lists nothing for a plain table (process_identities, servers, …):
    the table itself is added."""
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return 0
    return await conn.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM "
        "(SELECT relid FROM pg_partition_tree($1::regclass) UNION SELECT $1::regclass) t",
        table)


async def write_before(conn: asyncpg.Connection, reports: list[list[tuple]]) -> None:
    by_kind: dict[str, list] = {"p": [], "g": [], "s": []}
    servers = {}
    for messages in reports:
        for kind, row in messages:
            if kind in by_kind:
                by_kind[kind].append(row)
            servers[row[0]] = row[1]
    async with conn.transaction():
        for kind, rows in by_kind.items():
            await conn.copy_records_to_table(OLD_TABLES[kind], records=rows,
                                             columns=OLD_COLUMNS[kind])
        await conn.executemany(
            "INSERT INTO servers (server_id, first_seen_at, last_seen_at) VALUES ($1, $2, $2) "
            "ON CONFLICT (server_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at",
            list(servers.items()))


async def rollup_before(conn: asyncpg.Connection, start: datetime, end: datetime,
                        retention_days: int) -> None:
    """The rollups of the 0002 schema (text keys in every cell) as its job wrote them: day
    partitions, then hour by hour the minute cells, their hour cells and the fleet sums. The
    current job writes the dictionary keys of migrations/0006, which that schema lacks."""
    await partitions.run_upkeep(conn, end.date(), retention_days, 1, tables=ROLLUP_TABLES)
    columns = ", ".join(CELL_COLUMNS)
    hourly = ", ".join(f"max({c})" if c == "memory_peak_bytes" else f"sum({c})"
                       for c in CELL_COLUMNS)
    summed = ", ".join(f"sum({c})" for c in CELL_COLUMNS)
    hour = start
    while hour < end:
        upto = hour + timedelta(hours=1)
        for source, function in MINUTE_FUNCTIONS.items():
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO rollup_minute (source, server_id, name, ts, {columns}) "
                    f"SELECT $1, server_id, name, ts, {columns} FROM {function}($2, $3, NULL)",
                    source, hour, upto)
                await conn.execute(
                    f"INSERT INTO rollup_hour (source, server_id, name, ts, {columns}) "
                    f"SELECT source, server_id, name, date_trunc('hour', ts), {hourly} "
                    f"FROM rollup_minute WHERE source = $1 AND ts >= $2 AND ts < $3 "
                    f"GROUP BY source, server_id, name, date_trunc('hour', ts)",
                    source, hour, upto)
                for fleet, table in (("rollup_fleet_minute", "rollup_minute"),
                                     ("rollup_fleet_hour", "rollup_hour")):
                    await conn.execute(
                        f"INSERT INTO {fleet} (source, name, ts, servers, {columns}) "
                        f"SELECT source, name, ts, count(*), {summed} FROM {table} "
                        f"WHERE source = $1 AND ts >= $2 AND ts < $3 GROUP BY source, name, ts",
                        source, hour, upto)
        hour = upto


async def upkeep_after(conn: asyncpg.Connection, now: datetime, hot_h: float) -> str:
    """The storage upkeep of the current schema, if this release has one."""
    try:
        from digest_worker.compaction import run_storage_upkeep
    except ImportError:
        return "no compaction in this release"
    report = await run_storage_upkeep(conn, now=now, older_than=timedelta(hours=hot_h))
    return str(report.as_kv())


async def run(urls: dict[str, str], args: argparse.Namespace) -> None:
    intervals = int(args.hours * 3600 / args.interval_s)
    # The seeded hours end at the last midnight (UTC), and the upkeep runs at least the hot
    # window later: every seeded hour is closed and compactable, and its day partition of
    # hot rows is whole, as for every day but today in a running fleet.
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=args.hours)
    now = max(datetime.now(UTC), end + timedelta(hours=args.hot_h, minutes=1))
    fleet = FleetDay(hosts=args.hosts, processes=args.processes, groups=args.groups,
                     start=start.timestamp(), interval_s=args.interval_s, seed=args.seed)
    conns = {name: await asyncpg.connect(url) for name, url in urls.items()}
    try:
        for name, conn in conns.items():
            await install_codec(conn)
            await conn.execute("SET synchronous_commit = off")
            days = (now.date() - start.date()).days + 3
            tables = (tuple(OLD_TABLES.values()) if name == "before"
                      else partitions.DAILY_TABLES)
            await partitions.run_upkeep(conn, now.date(), days, 1, tables=tables)
        writer = BatchWriter("copy")
        await writer.prepare(conns["after"])
        seconds = {"before": 0.0, "after": 0.0}
        counts = {"p": 0, "g": 0}
        pending: list[list[tuple]] = []

        async def flush() -> None:
            started = time.perf_counter()
            await write_before(conns["before"], pending)
            seconds["before"] += time.perf_counter() - started
            started = time.perf_counter()
            await writer.commit(conns["after"], [m for report in pending for m in report])
            seconds["after"] += time.perf_counter() - started
            pending.clear()

        for messages in fleet.reports(intervals):
            for kind, _row in messages:
                if kind in counts:
                    counts[kind] += 1
            pending.append(messages)
            if len(pending) >= BATCH_REPORTS:
                await flush()
        if pending:
            await flush()
        print(f"seeded {counts['p']:,} process samples and {counts['g']:,} group samples "
              f"({args.hosts} hosts x {args.hours} h); write seconds: before "
              f"{seconds['before']:.1f}, after {seconds['after']:.1f}")
        for name, conn in conns.items():
            started = time.perf_counter()
            retention_days = args.hours // 24 + 3
            if name == "before":
                await rollup_before(conn, start, end, retention_days)
                note = ""
            else:
                job = RollupJob(conn, retention_days=retention_days, max_chunks=10**6)
                await job.refresh_rollups(now)
                note = await upkeep_after(conn, now, args.hot_h)
            await conn.execute("VACUUM ANALYZE")
            print(f"{name}: upkeep {time.perf_counter() - started:.1f} s {note}")
        await report_sizes(conns, counts)
    finally:
        for conn in conns.values():
            await conn.close()


async def report_sizes(conns: dict[str, asyncpg.Connection], counts: dict[str, int]) -> None:
    samples = {"process history": counts["p"], "group history": counts["g"]}
    rows = []
    totals = {}
    for name, conn in conns.items():
        total = 0
        for tier, tables in TIERS[name].items():
            size = sum([await relation_bytes(conn, t) for t in tables])
            total += size
            rows.append((name, tier, size))
        totals[name] = total
    print(f"\n{'tier':<20} {'bytes before':>14} {'bytes after':>14} "
          f"{'B/sample before':>16} {'B/sample after':>15}")
    for tier in TIERS["before"]:
        before = next(s for n, t, s in rows if n == "before" and t == tier)
        after = next(s for n, t, s in rows if n == "after" and t == tier)
        per = samples.get(tier, counts["p"])
        print(f"{tier:<20} {before:>14,} {after:>14,} {before / per:>16.1f} "
              f"{after / per:>15.1f}")
    print(f"{'whole database':<20} {totals['before']:>14,} {totals['after']:>14,} "
          f"{totals['before'] / counts['p']:>16.1f} {totals['after'] / counts['p']:>15.1f}")
    print("(per sample: process history / process samples, group history / group samples, "
          "rollups, snapshots and whole database / process samples)")


async def with_databases(admin_url: str, args: argparse.Namespace) -> None:
    async with (scratch_database(admin_url, "storage_before") as before,
                scratch_database(admin_url, "storage_after") as after):
        urls = {"before": before, "after": after}
        with tempfile.TemporaryDirectory() as old_dir:
            for migration in discover():
                if migration.version <= 2:
                    shutil.copy(migration.path, Path(old_dir) / migration.path.name)
            await migrate(urls["before"], Path(old_dir))
        await migrate(urls["after"])
        await run(urls, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--groups", type=int, default=25)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--interval-s", type=float, default=15.0)
    parser.add_argument("--hot-h", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="1 host, 4 hours")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.hours = 1, 4
    run_on_postgres(lambda admin_url: with_databases(admin_url, args), "storage")


if __name__ == "__main__":
    main()
