"""Bytes on disk of each rollup table per process sample: what each retention tier costs.

    python bench/bench_rollup_tiers.py [--hosts 1] [--processes 300] [--groups 25] [--hours 24]

Seeds a fleet day (bench/fleet_day.py, as bench_storage.py does) with the digest writer, runs
the rollup job over it, VACUUMs and prints, per rollup table, rows and bytes (heap + indexes
+ TOAST of every partition) per process sample. The per-server tables (``rollup_minute``,
``rollup_hour``) grow with the hosts; the fleet-wide ones (``rollup_fleet_*``) with the
fleet's distinct names: with one host they hold as many rows as the per-server ones. The
README's "Retention and disk" multiplies these by each tier's retention.

Uses an EmbeddedPostgres in a temp dir unless ``DATABASE_URL`` is set (then a scratch
database is created on that server and dropped at the end).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.fleet_day import FleetDay  # noqa: E402
from bench.postgres import run_on_postgres, scratch_database  # noqa: E402
from digest_worker import partitions  # noqa: E402
from digest_worker.retention import ROLLUP_TABLES  # noqa: E402
from digest_worker.rollup import RollupJob  # noqa: E402
from digest_worker.timestamps import install_codec  # noqa: E402
from digest_worker.writer import BatchWriter  # noqa: E402
from migrations.runner import migrate  # noqa: E402

BATCH_MESSAGES = 20_000


async def table_bytes(conn: asyncpg.Connection, table: str) -> int:
    return await conn.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i "
        "WHERE i.inhparent = $1::regclass", table)


async def run(url: str, args: argparse.Namespace) -> None:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=args.hours)
    now = max(datetime.now(UTC), end + timedelta(minutes=5))
    days = args.hours // 24 + 3
    conn = await asyncpg.connect(url)
    try:
        await install_codec(conn)
        await conn.execute("SET synchronous_commit = off")
        await partitions.run_upkeep(conn, now.date(), days, 1)
        fleet = FleetDay(hosts=args.hosts, processes=args.processes, groups=args.groups,
                         start=start.timestamp(), interval_s=args.interval_s, seed=args.seed)
        writer = BatchWriter("copy")
        await writer.prepare(conn)
        samples, pending = 0, []
        started = time.perf_counter()
        for messages in fleet.reports(int(args.hours * 3600 / args.interval_s)):
            samples += sum(kind == "p" for kind, _row in messages)
            pending += messages
            if len(pending) >= BATCH_MESSAGES:
                await writer.commit(conn, pending)
                pending = []
        if pending:
            await writer.commit(conn, pending)
        print(f"seeded {samples:,} process samples ({args.hosts} hosts x {args.hours} h) in "
              f"{time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        await RollupJob(conn, retention_days=days, max_chunks=10**6).refresh_rollups(now)
        await conn.execute("VACUUM ANALYZE")
        print(f"rollup job {time.perf_counter() - started:.0f} s\n")
        print(f"{'table':<22} {'rows':>10} {'bytes':>14} {'B/process sample':>17}")
        for table in ROLLUP_TABLES:
            size = await table_bytes(conn, table)
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
            print(f"{table:<22} {rows:>10,} {size:>14,} {size / samples:>17.2f}")
    finally:
        await conn.close()


async def with_database(admin_url: str, args: argparse.Namespace) -> None:
    async with scratch_database(admin_url, "rollup_tiers") as url:
        await migrate(url)
        await run(url, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--groups", type=int, default=25)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--interval-s", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    run_on_postgres(lambda admin_url: with_database(admin_url, args), "rollup-tiers")


if __name__ == "__main__":
    main()
