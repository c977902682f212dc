"""`procfleet export`: rows/s, bytes per million rows and peak RSS, Parquet and CSV side by side
with a plain ``COPY … TO STDOUT (FORMAT csv)`` of the same rows, in the same run.

    python bench/bench_export.py [--servers 20] [--processes 100] [--rows 2000000]
                                 [--small-rows 500000]

Seeds ``--rows`` OS process samples (``--servers`` x ``--processes`` series every 15 s, with
40-100 character command lines, CPU counters in centiseconds as ps gives them, resident
memory that moves by up to 4 MiB) with one INSERT … SELECT, then exports two windows — the
first ``--small-rows`` rows' worth and all of them — in each format, every export in its own
``procfleet export`` subprocess so its peak RSS (``wait4``'s ru_maxrss) is its own. The COPY
baselines write the same window to a file from this process: ``COPY (SELECT * FROM
process_samples …)`` (the table as stored, no rates) and ``COPY (<the export's SQL>)`` (the
same columns and rates as the export), so the figures separate what PostgreSQL costs from what
the Arrow pipeline costs.

Uses an EmbeddedPostgres in a temp dir unless ``DATABASE_URL`` is set (then a scratch
database is created on that server and dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.postgres import scratch_database  # noqa: E402
from migrations.runner import migrate  # noqa: E402
from procfleet.embedded import EmbeddedPostgres  # noqa: E402
from procfleet.export.sources import SOURCES  # noqa: E402

INTERVAL_S = 15
SEED_SQL = """
INSERT INTO process_samples (server_id, ts, pid, start_time, ppid, username, name, command,
    state, cpu_seconds_total, memory_percent, rss_bytes, vsz_bytes)
SELECT 'srv-' || lpad(s::text, 3, '0'), $1::timestamptz + i * interval '15 seconds',
       1000 + p, $1::timestamptz - interval '1 day', 1, 'app', 'proc-' || (p % 40),
       '/usr/bin/proc-' || (p % 40) || ' --config /etc/app/' || p || '.toml --workers '
           || (p % 8) || repeat(' --flag', p % 10),
       'S', round((100 + i * 15 * (0.01 + (p % 20) * 0.02) + random() * 0.1)::numeric, 2),
       round((random() * 5)::numeric, 1),
       ((30 + p % 300) * 1048576 + random() * 4194304)::bigint,
       ((300 + p % 900) * 1048576 + random() * 1048576)::bigint
FROM generate_series(1, $2::int) s, generate_series(1, $3::int) p,
     generate_series(0, $4::int - 1) i
"""


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def run_export(url: str, start: datetime, end: datetime, file_format: str,
               out: Path) -> dict:
    """One `procfleet export` in a subprocess: seconds, file bytes, peak RSS (MiB)."""
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "procfleet", "--log-level", "WARNING", "export", "--from",
         iso(start), "--to", iso(end), "--source", "processes", "--format", file_format,
         "--out", str(out)], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"export failed with exit code {proc.returncode}")
    return {"s": seconds, "bytes": out.stat().st_size, "rss_mib": usage.ru_maxrss / 1024}


async def run_copy(conn: asyncpg.Connection, sql: str, args: list, out: Path) -> dict:
    started = time.perf_counter()
    await conn.copy_from_query(sql, *args, output=str(out), format="csv", header=True)
    return {"s": time.perf_counter() - started, "bytes": out.stat().st_size, "rss_mib": None}


async def run_bench(url: str, args: argparse.Namespace, work: Path) -> None:
    await migrate(url)
    conn = await asyncpg.connect(url)
    samples = args.rows // (args.servers * args.processes)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    await conn.execute("SET synchronous_commit = off")
    await conn.execute(SEED_SQL, start, args.servers, args.processes, samples)
    # process_samples is a view now (migrations/0003): seeding through it goes one row at a
    # time through its INSTEAD OF trigger (slow, but only the seed), and VACUUM needs the tables
    await conn.execute("VACUUM ANALYZE process_points, process_identities")
    seeded = await conn.fetchval("SELECT count(*) FROM process_samples")
    print(f"seeded {seeded:,} process samples ({args.servers} servers x {args.processes} "
          f"processes x {samples} samples) in {time.perf_counter() - started:.0f} s", flush=True)
    small_samples = max(args.small_rows // (args.servers * args.processes), 1)
    windows = [(small_samples * args.servers * args.processes,
                start + timedelta(seconds=small_samples * INTERVAL_S)),
               (seeded, start + timedelta(seconds=samples * INTERVAL_S))]
    print(f"\n{'rows':>10}  {'method':<34}{'rows/s':>10}{'MB / M rows':>13}{'peak RSS':>11}")
    for rows, end in windows:
        results = []
        for file_format in ("parquet", "csv"):
            out = work / f"export-{rows}.{file_format}"
            results.append((f"procfleet export --format {file_format}",
                            run_export(url, start, end, file_format, out)))
            out.unlink()
        plain = ("SELECT * FROM process_samples WHERE ts >= $1 AND ts < $2")
        results.append(("COPY table (FORMAT csv)",
                        await run_copy(conn, plain, [start, end], work / "copy.csv")))
        export_sql = SOURCES["processes"].sql().replace("$3::text[]", "NULL::text[]")
        results.append(("COPY export SQL (FORMAT csv)",
                        await run_copy(conn, export_sql, [start, end], work / "copy.csv")))
        for label, result in results:
            rss = f"{result['rss_mib']:.0f} MiB" if result["rss_mib"] is not None else "-"
            print(f"{rows:>10,}  {label:<34}{rows / result['s']:>10,.0f}"
                  f"{result['bytes'] / 1e6 / (rows / 1e6):>13.1f}{rss:>11}", flush=True)
    await conn.close()


async def with_database(admin_url: str, args: argparse.Namespace, work: Path) -> None:
    async with scratch_database(admin_url, "export") as url:
        await run_bench(url, args, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--processes", type=int, default=100)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--small-rows", type=int, default=500_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="procfleet-bench-export-"))
    work.chmod(0o755)
    try:
        if os.environ.get("DATABASE_URL"):
            asyncio.run(with_database(os.environ["DATABASE_URL"], args, work))
            return
        server = EmbeddedPostgres(work / "pgdata")
        server.start()
        try:
            asyncio.run(with_database(server.url, args, work))
        finally:
            server.remove()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
