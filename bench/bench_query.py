"""Top-processes query: the rollup path and the raw LAG path side by side.

    python bench/bench_query.py [--servers 100] [--groups 100] [--days 7] [--interval-s 15]
                                [--runs 20] [--raw-runs 5] [--quick] [--compact]

The fleet: ``--servers`` x ``--groups`` process_exporter groups sampled every 15 s for
``--days`` days, plus ps processes (``--processes`` per host) on 10 servers. 100 x 100 at 15 s
for 7 days is 403 M raw rows (~60 GB), more than this box can hold or seed in a benchmark,
so the raw samples are seeded where a measured query reads them:

- server ``srv-000``: every sample of the whole period (100 groups x 7 d = 4 M rows);
- every server: the last ``--recent-min`` minutes (the 1 h windows);
- ps processes on ``srv-000`` .. ``srv-009``: the last ``--recent-min`` minutes.

The rollup job (digest_worker/rollup.py) then rolls all of it up, and the history of the
other servers is filled in the rollup tables by copying ``srv-000``'s rows (scaled): the
rollup tables have the full fleet's size (per-server hours for 7 days, per-server minutes
for the last 7 h, fleet minutes and hours). Each query is the top-10 by CPU as the API runs
it (source choice, plan, SQL, server count), forced to one path; raw queries that would
read the fleet's 57 M (24 h) or 403 M (7 d) rows are not run.

Uses an EmbeddedPostgres in a temp dir unless ``DATABASE_URL`` is set (then a scratch
database is created on that server and dropped at the end).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.postgres import run_on_postgres  # noqa: E402
from digest_worker import partitions  # noqa: E402
from digest_worker.compaction import run_storage_upkeep  # noqa: E402
from digest_worker.rollup import RollupJob, rebuild_fleet  # noqa: E402
from ingest_gateway.query.database import SERVER_SETTINGS, STATEMENT_TIMEOUT_MS  # noqa: E402
from ingest_gateway.query.params import TimeRange, TopParams  # noqa: E402
from ingest_gateway.query.top import top_processes  # noqa: E402
from migrations.runner import migrate  # noqa: E402

WINDOWS_H = (1, 24, 168)
PROCESS_NAMES = 40

# Straight into the identity and point tables (migrations/0003); the process_*_samples views
# take inserts too, but one row at a time.
GROUPS_SQL = """
WITH samples AS MATERIALIZED (
SELECT 'srv-' || lpad(s::text, 3, '0') AS server_id, t AS ts,
       'group-' || lpad(g::text, 3, '0') AS name, 1 + g % 7 AS num_procs,
       0.8 * c.cpu AS cpu_user, 0.2 * c.cpu AS cpu_system,
       ((20 + (g * 37) % 900) * (1 + s % 5 * 0.1) * 1048576)::bigint AS memory
FROM generate_series($1::int, $2::int) s, generate_series(0, $3::int - 1) g,
     generate_series($4::timestamptz, $5::timestamptz - interval '1 microsecond',
                     make_interval(secs => $6)) t,
     -- cores of a group: a long tail (group-000 busiest), steady over time
     LATERAL (SELECT extract(epoch FROM t - $7::timestamptz)
                     * (2.0 / (1 + g * 0.35)) * (1 + s % 4 * 0.25) AS cpu) c
), series AS (
    INSERT INTO process_groups AS x (key, server_id, first_seen, last_seen, name)
    SELECT group_key(server_id, name), server_id, min(ts), max(ts), name
    FROM samples GROUP BY server_id, name
    ON CONFLICT (key) DO UPDATE SET first_seen = least(x.first_seen, EXCLUDED.first_seen),
                                    last_seen = greatest(x.last_seen, EXCLUDED.last_seen)
)
INSERT INTO process_group_points (key, ts, num_procs, cpu_user_seconds_total,
                                  cpu_system_seconds_total, memory_resident_bytes)
SELECT group_key(server_id, name), ts, num_procs, cpu_user, cpu_system, memory
FROM samples ORDER BY ts
"""

PROCESSES_SQL = """
WITH samples AS MATERIALIZED (
SELECT 'srv-' || lpad(s::text, 3, '0') AS server_id, t AS ts, (1000 + p)::bigint AS pid,
       $7::timestamptz - make_interval(secs => p) AS start_time,
       'proc-' || lpad((p % $8)::text, 2, '0') AS name,
       extract(epoch FROM t - $7::timestamptz) * (1.0 / (1 + p * 0.2)) AS cpu,
       ((10 + p % 50) * 1048576)::bigint AS rss
FROM generate_series($1::int, $2::int) s, generate_series(0, $3::int - 1) p,
     generate_series($4::timestamptz, $5::timestamptz - interval '1 microsecond',
                     make_interval(secs => $6)) t
), ids AS (
    INSERT INTO process_identities AS x (key, server_id, pid, start_time, first_seen,
                                         last_seen, username, name, command)
    SELECT process_key(server_id, pid, start_time), server_id, pid, start_time, min(ts),
           max(ts), 'app', name, '/usr/bin/proc --worker'
    FROM samples GROUP BY server_id, pid, start_time, name
    ON CONFLICT (key) DO UPDATE SET first_seen = least(x.first_seen, EXCLUDED.first_seen),
                                    last_seen = greatest(x.last_seen, EXCLUDED.last_seen)
)
INSERT INTO process_points (key, ts, cpu_seconds_total, rss_bytes, state)
SELECT process_key(server_id, pid, start_time), ts, cpu, rss, 'S'
FROM samples ORDER BY ts
"""


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def seed(conn: asyncpg.Connection, args: argparse.Namespace, now: datetime) -> dict:
    """Raw samples (see the module docstring); returns row counts and seconds spent."""
    await conn.execute("SET synchronous_commit = off")
    origin = now - timedelta(days=args.days + 1)
    await partitions.run_upkeep(conn, now.date(), args.days + 1, 1)
    recent = now - timedelta(minutes=args.recent_min)
    end = now + timedelta(minutes=2)
    started = time.perf_counter()
    rows = 0
    # srv-000: the whole period, one hour per statement (in ts order, like ingest).
    hour = floor_hour(now - timedelta(days=args.days))
    while hour < recent:
        upto = min(hour + timedelta(hours=1), recent)
        status = await conn.execute(GROUPS_SQL, 0, 0, args.groups, hour, upto,
                                    float(args.interval_s), origin)
        rows += int(status.split()[-1])
        hour = upto
    status = await conn.execute(GROUPS_SQL, 0, args.servers - 1, args.groups, recent, end,
                                float(args.interval_s), origin)
    rows += int(status.split()[-1])
    status = await conn.execute(PROCESSES_SQL, 0, min(10, args.servers) - 1, args.processes,
                                recent, end, float(args.interval_s), origin, PROCESS_NAMES)
    process_rows = int(status.split()[-1])
    await conn.executemany(
        "INSERT INTO servers (server_id, hostname, os_type, first_seen_at, last_seen_at) "
        "VALUES ($1, $1, 'linux', $2, $3)",
        [(f"srv-{s:03d}", origin, end) for s in range(args.servers)])
    await conn.execute("VACUUM ANALYZE process_group_points")
    await conn.execute("VACUUM ANALYZE process_points")
    return {"group_rows": rows, "process_rows": process_rows,
            "seed_s": time.perf_counter() - started}


async def fill_rollups(conn: asyncpg.Connection, args: argparse.Namespace,
                       now: datetime) -> dict:
    """The real rollup job over the seeded samples, then the other servers' history copied
    from srv-000's rollup rows."""
    job = RollupJob(conn, retention_days=args.days + 1, max_chunks=100_000)
    started = time.perf_counter()
    report = await job.refresh_rollups(now)
    job_s = time.perf_counter() - started
    recent = now - timedelta(minutes=args.recent_min)
    minute_from = now - timedelta(hours=7)
    started = time.perf_counter()
    await conn.execute("SET synchronous_commit = off")
    # The other servers' series (dictionary rows, migrations/0006), then their cells.
    await conn.execute(
        "INSERT INTO rollup_series (name_id, server_id) "
        "SELECT k.name_id, 'srv-' || lpad(s::text, 3, '0') FROM rollup_series_names k, "
        "generate_series(1, $1::int - 1) s WHERE k.source = 'groups' AND k.server_id = 'srv-000' "
        "ON CONFLICT DO NOTHING", args.servers)
    for table, since in (("rollup_minute", minute_from), ("rollup_hour", None)):
        until = recent if table == "rollup_minute" else floor_hour(recent)
        await conn.execute(
            f"INSERT INTO {table} (series_id, ts, samples, cpu_seconds, cpu_core_minutes, "
            f"memory_byte_minutes, memory_peak_bytes, num_procs_minutes) "
            f"SELECT o.series_id, r.ts, r.samples, r.cpu_seconds * f, r.cpu_core_minutes * f, "
            f"r.memory_byte_minutes * f, r.memory_peak_bytes * f, r.num_procs_minutes "
            f"FROM {table} r JOIN rollup_series_names k USING (series_id) "
            f"JOIN rollup_series o ON o.name_id = k.name_id AND o.server_id <> 'srv-000', "
            f"LATERAL (SELECT 1 + substr(o.server_id, 5)::int % 4 * 0.25 AS f) m "
            f"WHERE k.source = 'groups' AND k.server_id = 'srv-000' AND r.ts < $1 "
            f"AND ($2::timestamptz IS NULL OR r.ts >= $2) "
            f"ON CONFLICT DO NOTHING", until, since)
    await rebuild_fleet(conn, "rollup_fleet_minute", "rollup_minute", "groups",
                        minute_from - timedelta(hours=1), now)
    await rebuild_fleet(conn, "rollup_fleet_hour", "rollup_hour", "groups",
                        now - timedelta(days=args.days + 1), now + timedelta(hours=1))
    await conn.execute("ANALYZE")
    sizes = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in
             ("rollup_minute", "rollup_hour", "rollup_fleet_minute", "rollup_fleet_hour")}
    return {"job_s": job_s, "job_minutes": report.minutes, "copy_s": time.perf_counter() - started,
            "sizes": sizes}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(pool: asyncpg.Pool, params: TopParams, path: str, runs: int) -> dict:
    timings, result = [], None
    async with pool.acquire() as conn:
        await top_processes(conn, params, path=path)  # warm: plan cache, buffers
        for _ in range(runs):
            started = time.perf_counter()
            result = await top_processes(conn, params, path=path)
            timings.append((time.perf_counter() - started) * 1000)
    assert result is not None and result.plan.path == path, (path, result and result.plan)
    return {"p50": statistics.median(timings), "p95": percentile(timings, 0.95),
            "runs": runs, "top": result.processes[0]["name"] if result.processes else "-",
            "avg": result.processes[0]["avg_cpu_percent"] if result.processes else 0.0}


async def run_bench(url: str, args: argparse.Namespace) -> None:
    if args.reuse:
        await measure_all(url, args)
        return
    await migrate(url)
    conn = await asyncpg.connect(url)
    now = await conn.fetchval("SELECT now()")
    print(f"seeding {args.servers} servers x {args.groups} groups every {args.interval_s:g} s "
          f"(srv-000: {args.days} d, all: last {args.recent_min} min), "
          f"{args.processes} processes on {min(10, args.servers)} servers …", flush=True)
    seeded = await seed(conn, args, now)
    print(f"  {seeded['group_rows']:,} group rows + {seeded['process_rows']:,} process rows "
          f"in {seeded['seed_s']:.0f} s", flush=True)
    filled = await fill_rollups(conn, args, now)
    rolled = seeded["group_rows"] + seeded["process_rows"]
    print(f"  rollup job: {filled['job_s']:.0f} s for {rolled:,} raw rows "
          f"({rolled / filled['job_s']:,.0f} rows/s); history copied in "
          f"{filled['copy_s']:.0f} s", flush=True)
    print("  rollup rows: " + ", ".join(f"{t} {n:,}" for t, n in filled["sizes"].items()))
    if args.compact:  # the storage upkeep, as the workers run it (hot window 2 h)
        started = time.perf_counter()
        report = await run_storage_upkeep(conn, now=now, older_than=timedelta(hours=2))
        print(f"  compaction: {report.as_kv()} in {time.perf_counter() - started:.0f} s",
              flush=True)
    await conn.close()
    await measure_all(url, args)


async def measure_all(url: str, args: argparse.Namespace) -> None:

    # The gateway's settings, with room for the raw queries over days of samples.
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, server_settings={
        **SERVER_SETTINGS, "statement_timeout": str(STATEMENT_TIMEOUT_MS * 20)})
    all_rows = args.servers * args.groups * 3600 / args.interval_s
    scenarios = [("all servers", None, "groups"), ("one server", ("srv-000",), "groups"),
                 ("10 servers, ps processes", tuple(f"srv-{s:03d}" for s in range(10)),
                  "processes")]
    print(f"\n{'selection':<26}{'window':>7}{'rollup p50':>12}{'p95':>9}{'raw p50':>11}"
          f"{'p95':>10}{'raw/rollup':>12}  top (avg CPU %)")
    for label, server_ids, source in scenarios:
        for hours in WINDOWS_H:
            if source == "processes" and hours > 1:
                continue  # ps samples are seeded for the last hour only
            real_now = datetime.now(UTC)
            params = TopParams(time_range=TimeRange(real_now - timedelta(hours=hours), real_now,
                                                    hours), server_ids=server_ids, source=source)
            rollup = await measure(pool, params, "rollup", args.runs)
            raw_rows = all_rows * hours if server_ids is None else 0
            if raw_rows > args.max_raw_rows:
                raw = None
                raw_text = f"{'n/a':>11}{'':>10}{'':>12}"
            else:
                raw = await measure(pool, params, "raw", args.raw_runs)
                raw_text = (f"{raw['p50']:>9.1f}ms{raw['p95']:>8.1f}ms"
                            f"{raw['p95'] / rollup['p95']:>11.1f}x")
            averages = f"{rollup['avg']:.1f}" + ("" if raw is None else f" / {raw['avg']:.1f}")
            print(f"{label:<26}{hours:>6}h{rollup['p50']:>10.1f}ms{rollup['p95']:>7.1f}ms"
                  f"{raw_text}  {rollup['top']} ({averages})", flush=True)
    print(f"\nn/a: the raw path would read {all_rows * 24:,.0f} (24 h) / "
          f"{all_rows * 168:,.0f} (7 d) rows; not seeded, not run. Goal: p95 <= 50 ms (1 h), "
          f"<= 200 ms (7 d).")
    await pool.close()


def scratch_database(url: str) -> tuple[str, str]:
    name = f"procfleet_bench_query_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(url)
    return name, urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def with_database(admin_url: str, args: argparse.Namespace) -> None:
    if args.reuse:
        await run_bench(args.reuse, args)
        return
    name, url = scratch_database(admin_url)
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await run_bench(url, args)
    finally:
        if args.keep:
            print(f"kept the database: --reuse {url}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--interval-s", type=float, default=15.0)
    parser.add_argument("--recent-min", type=int, default=65)
    parser.add_argument("--processes", type=int, default=150)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per rollup query")
    parser.add_argument("--raw-runs", type=int, default=5, help="timed runs per raw query")
    parser.add_argument("--max-raw-rows", type=float, default=5e6,
                        help="skip raw queries over more seeded rows than this")
    parser.add_argument("--quick", action="store_true", help="20 servers x 50 groups, 2 days")
    parser.add_argument("--compact", action="store_true",
                        help="run the storage upkeep (compaction, hot window 2 h) before "
                             "measuring: raw queries read the compacted history")
    parser.add_argument("--keep", action="store_true",
                        help="keep the seeded database (with DATABASE_URL) for --reuse")
    parser.add_argument("--reuse", metavar="URL", default=None,
                        help="measure a database kept by --keep, seed nothing")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.groups, args.days, args.runs, args.raw_runs = 20, 50, 2, 10, 3
    run_on_postgres(lambda admin_url: with_database(admin_url, args), "query")


if __name__ == "__main__":
    main()
