"""The fleet process inventory's SQL (/api/processes/search and /new): migration 0007's
indexes and process_names next to the schema before it, on the same data in one run.

    python bench/bench_inventory.py [--hosts 100] [--days 14] [--runs 20] [--quick]
                                    [--explain]

"The benchmark fleet" is seeded straight into ``process_identities`` (COPY): per host and
day ~``--long`` long-lived processes (services that live for days, a few restarted every
day) and ``--short`` short-lived ones (cron jobs, health checks, ssh sessions; seconds to
minutes), 32-character machine ids and ~90-character command lines from bench/fleet_day.py,
a few one-off job names per host, and every day a few new names rolled out to part of the
fleet. The newest identities end at the real now, as a live fleet's do.

Then, on that data: the schema of migrations 0001–0005 with the SQL the API ran before
(``BASELINE_*``), then migration 0007 applied (its time is printed) and the API's SQL as
ingest_gateway/query/inventory.py runs it now. Each query runs ``--runs`` times with the
query pool's settings (custom plans); p50 / p95 in ms.

Uses an EmbeddedPostgres in a temp dir unless ``DATABASE_URL`` is set (then a scratch
database is created on that server and dropped at the end).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.fleet_day import COMMANDS, KERNEL_THREADS, NAMES, SHORT, USERS  # noqa: E402
from bench.postgres import run_on_postgres, scratch_database  # noqa: E402
from digest_worker.identity import IDENTITY_COLUMNS, process_key  # noqa: E402
from ingest_gateway.query.database import SERVER_SETTINGS  # noqa: E402
from ingest_gateway.query.inventory import (  # noqa: E402
    NewParams,
    SearchParams,
    like_literal,
    new_processes,
    search_processes,
)
from ingest_gateway.query.params import TimeRange  # noqa: E402
from migrations.runner import MIGRATIONS_DIR, discover, migrate  # noqa: E402

# The API's SQL before migration 0007 (ingest_gateway/query/inventory.py at that time).
BASELINE_SEARCH_SQL = r"""
SELECT i.server_id, s.hostname, i.pid, i.start_time, i.name, i.command, i.username,
       i.first_seen, i.last_seen
FROM process_identities i LEFT JOIN servers s ON s.server_id = i.server_id
WHERE (i.name ILIKE $1 ESCAPE '\' OR i.command ILIKE $1 ESCAPE '\')
  AND i.first_seen <= $3 AND i.last_seen >= $2
  AND ($4::text[] IS NULL OR i.server_id = ANY ($4::text[]))
ORDER BY i.last_seen DESC, i.server_id, i.pid
LIMIT $5
"""
BASELINE_NEW_SQL = """
WITH fresh AS (
    SELECT i.server_id, i.name, min(i.first_seen) AS first_seen,
           (array_agg(i.command ORDER BY i.first_seen, i.pid))[1] AS command
    FROM process_identities i
    WHERE i.first_seen > $1 AND i.first_seen <= $2
      AND ($3::text[] IS NULL OR i.server_id = ANY ($3::text[]))
    GROUP BY i.server_id, i.name
), new AS (
    SELECT f.* FROM fresh f
    WHERE NOT EXISTS (SELECT 1 FROM process_identities o
                      WHERE o.server_id = f.server_id AND o.name = f.name
                        AND o.first_seen <= $1)
)
SELECT n.name, count(*) AS servers, min(n.first_seen) AS first_seen,
       (array_agg(n.command ORDER BY n.first_seen, n.server_id))[1] AS example_command
FROM new n
GROUP BY n.name
ORDER BY servers DESC, first_seen, n.name
LIMIT $4
"""

KEYS_SQL = """
SELECT i.key FROM process_identities i WHERE i.server_id = ANY ($1) AND i.last_seen >= $2
"""
KEYS_HOUR_SQL = KEYS_SQL + """  AND i.last_seen_hour >= date_bin('1 hour', $2,
                                 TIMESTAMPTZ '2000-01-01 00:00:00+00')
"""

TOOLS = ("sh", "bash", "curl", "rsync", "python3", "perl", "logrotate", "run-parts", "find",
         "gzip", "tar", "apt-check", "sshd", "healthcheck.sh", "sleep", "awk", "sed", "date")
# common, medium, rare (one-off job names), absent; 1–2 characters (no trigram)
TERMS = ("python", "rsync", "job-0424", "no-such-process", "py", "q9")
WINDOWS_H = (1, 24, 168)
LIMIT = 100


def fleet(args: argparse.Namespace, now: datetime):
    """The identity rows (IDENTITY_COLUMNS order) of the benchmark fleet."""
    rng = random.Random(7)
    start = now - timedelta(days=args.days)
    span = args.days * 86400.0
    hosts = [f"{rng.getrandbits(128):032x}" for _ in range(args.hosts)]
    # every day a few new names, each rolled out to part of the fleet during that day
    rollouts = [(f"agent-v{day}.{k}", day, rng.sample(range(args.hosts),
                                                      rng.randint(1, max(1, args.hosts // 2))))
                for day in range(args.days) for k in range(3)]
    for h, server_id in enumerate(hosts):
        pid = 1000

        def row(name: str, command: str, first: float, last: float, server_id=server_id):
            nonlocal pid
            pid += rng.randint(1, 30)
            first_seen = start + timedelta(seconds=first)
            start_time = first_seen - timedelta(seconds=rng.uniform(0, 15))
            return [process_key(server_id, pid, start_time), server_id, pid, start_time, 1,
                    None, first_seen, start + timedelta(seconds=last), rng.choice(USERS),
                    name, command, None, None]

        # long-lived: services alive for the whole period or restarted after a few days
        for _ in range(args.long):
            roll = rng.random()
            n = rng.randint(0, 99)
            if roll < 0.15:
                name = rng.choice(KERNEL_THREADS).format(n=n % 8)
                command = f"[{name}]"
            else:
                name = rng.choice(NAMES)
                command = rng.choice(COMMANDS).format(name=name, n=n)
            at = -rng.uniform(0, 30 * 86400) if rng.random() < 0.7 else 0.0
            while True:
                end = at + rng.uniform(0.5, 20) * 86400
                if end >= span - 60:  # alive now: seen within the last minute
                    yield row(name, command, max(at, 0.0), span - rng.uniform(0, 60))
                    break
                yield row(name, command, max(at, 0.0), end)
                at = end + rng.uniform(1, 30)  # restarted
        # short-lived: spread over the period, 15 s to 10 min
        for _ in range(args.short * args.days):
            at = rng.uniform(0, span - 60)
            n = rng.randint(0, 99)
            if rng.random() < 0.02:
                name = f"job-{rng.randint(0, 999):04d}"
                command = f"/opt/jobs/bin/{name} --once --report http://10.1.{n}.4:9000/"
            else:
                name = rng.choice(TOOLS)
                command = rng.choice(SHORT).format(name=rng.choice(NAMES), n=n)
            yield row(name, command, at, min(at + rng.uniform(15, 600), span - 1))
        for name, day, targets in rollouts:
            if h in targets:
                at = day * 86400 + rng.uniform(0, 86400 - 120)
                yield row(name, f"/opt/agent/{name}/bin/agent --fleet --region eu-west-1 "
                          f"--collector https://collector.example.com:8443", at,
                          min(at + rng.uniform(600, 3 * 86400), span - rng.uniform(0, 60)))


async def seed(url: str, args: argparse.Namespace, now: datetime) -> tuple[int, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = list(fleet(args, now))
        await conn.copy_records_to_table("process_identities", records=rows,
                                         columns=IDENTITY_COLUMNS)
        servers = sorted({r[1] for r in rows})
        await conn.executemany(
            "INSERT INTO servers (server_id, hostname, os_type, first_seen_at, last_seen_at) "
            "VALUES ($1, 'host-' || left($1, 6) || '.prod.example.com', 'linux', $2, $2)",
            [(s, now) for s in servers])
        await conn.execute("VACUUM ANALYZE process_identities")
        return len(rows), servers
    finally:
        await conn.close()


def quantiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


async def timed(pool: asyncpg.Pool, runs: int, call) -> tuple[float, float, list]:
    async with pool.acquire() as conn:
        rows = await call(conn)  # warm; the answer
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await call(conn)
            times.append((time.perf_counter() - started) * 1000)
    return (*quantiles(times), rows)


def cases(servers: list[str], now: datetime):
    one = (servers[0],)
    for term in TERMS:
        for hours in WINDOWS_H:
            for label, ids in (("all", None), ("one", one)):
                yield "search", (term, hours, label, ids)
    for hours in (24, 168):
        for label, ids in (("all", None), ("one", one)):
            yield "new", (None, hours, label, ids)
    for hours in WINDOWS_H:
        yield "keys", (None, hours, "one", one)


def calls(kind: str, case: tuple, now: datetime):
    term, hours, _label, ids = case
    start = now - timedelta(hours=hours)
    ids_list = list(ids) if ids else None
    if kind == "search":
        params = SearchParams(q=term, time_range=TimeRange(start, now, hours), server_ids=ids,
                              limit=LIMIT)

        async def before(conn):
            rows = await conn.fetch(BASELINE_SEARCH_SQL, like_literal(term), start, now,
                                    ids_list, LIMIT + 1)
            return [(r["server_id"], r["pid"]) for r in rows[:LIMIT]]

        async def after(conn):
            found = (await search_processes(conn, params))["processes"]
            return [(p["server_id"], p["pid"]) for p in found]
    elif kind == "keys":
        # process_points_between's server filter (the identities of a server live since
        # from - 15 min), before and after migrations/0007
        since = start - timedelta(minutes=15)

        async def before(conn):
            return sorted(r[0] for r in await conn.fetch(KEYS_SQL, ids_list, since))

        async def after(conn):
            return sorted(r[0] for r in await conn.fetch(KEYS_HOUR_SQL, ids_list, since))
    else:
        params = NewParams(since=start, until=now, server_ids=ids, limit=LIMIT)

        async def before(conn):
            rows = await conn.fetch(BASELINE_NEW_SQL, start, now, ids_list, LIMIT + 1)
            return [(r["name"], r["servers"], r["example_command"]) for r in rows[:LIMIT]]

        async def after(conn):
            found = (await new_processes(conn, params))["names"]
            return [(n["name"], n["servers"], n["example_command"]) for n in found]
    return before, after


async def explain(pool: asyncpg.Pool, kind: str, case: tuple, now: datetime) -> None:
    from ingest_gateway.query import inventory
    term, hours, _label, ids = case
    start = now - timedelta(hours=hours)
    ids_list = list(ids) if ids else None
    if kind == "search":
        sql, values = inventory.search_sql(ids), (like_literal(term), start, now, ids_list,
                                                   LIMIT + 1)
    elif kind == "keys":
        sql, values = KEYS_HOUR_SQL, (ids_list, start - timedelta(minutes=15))
    else:
        sql, values = inventory._NEW_SQL, (start, now, ids_list, LIMIT + 1)
    async with pool.acquire() as conn:
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}", *values)
    print("\n".join("      " + r[0] for r in plan))


async def run(url: str, args: argparse.Namespace) -> None:
    before_dir = Path(tempfile.mkdtemp(prefix="procfleet-bench-inventory-"))
    try:
        for migration in discover():
            if migration.version <= 5:
                shutil.copy(migration.path, before_dir / migration.path.name)
        await migrate(url, before_dir)
    finally:
        shutil.rmtree(before_dir, ignore_errors=True)
    now = datetime.now(UTC)
    started = time.perf_counter()
    identities, servers = await seed(url, args, now)
    print(f"seeded {identities:,} identities on {len(servers)} hosts over {args.days} days "
          f"in {time.perf_counter() - started:.0f} s")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1,
                                     server_settings=SERVER_SETTINGS)
    try:
        todo = list(cases(servers, now))
        before = {}
        for kind, case in todo:
            before[kind, case] = await timed(pool, args.runs, calls(kind, case, now)[0])
        await pool.expire_connections()
        started = time.perf_counter()
        await migrate(url, MIGRATIONS_DIR)
        async with pool.acquire() as conn:
            await conn.execute("ANALYZE process_identities; ANALYZE process_names; "
                               "ANALYZE process_texts")
            names = await conn.fetchval("SELECT count(*) FROM process_names")
            sizes = await conn.fetch(
                "SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c "
                "WHERE c.relname LIKE 'process_identities%' OR c.relname LIKE 'process_names%'"
                " OR c.relname LIKE 'process_texts%'"
                " ORDER BY 1")
        print(f"migration 0007 (indexes, process_names backfill: {names:,} rows) "
              f"{time.perf_counter() - started:.1f} s")
        for r in sizes:
            print(f"  {r['relname']:<36}{r['bytes'] / 2**20:>8.1f} MiB"
                  f"{r['bytes'] / identities:>8.1f} B/identity")
        print(f"\n{'query':<8}{'q':<17}{'window':>7}{'servers':>8}"
              f"{'before p50':>12}{'p95':>9}{'after p50':>11}{'p95':>9}{'rows':>6}")
        for kind, case in todo:
            after = await timed(pool, args.runs, calls(kind, case, now)[1])
            b = before[kind, case]
            term, hours, label, _ids = case
            print(f"{kind:<8}{term or '-':<17}{hours:>6}h{label:>8}{b[0]:>10.1f}ms"
                  f"{b[1]:>7.1f}ms{after[0]:>9.1f}ms{after[1]:>7.1f}ms{len(after[2]):>6}",
                  flush=True)
            # a cut answer may differ inside its oldest hour (ingest_gateway/query/inventory.py)
            if (b[2] != after[2]) if len(b[2]) < LIMIT else (len(after[2]) < LIMIT):
                print(f"  !! the answers differ: before {b[2][:3]}…, after {after[2][:3]}…")
            if args.explain:
                await explain(pool, kind, case, now)
        # retention as the upkeep would run it: identities last seen more than 7 days ago go,
        # then process_names_forget re-derives the names that lost identities
        async with pool.acquire() as conn:
            cutoff = now - timedelta(days=7)
            started = time.perf_counter()
            deleted = await conn.execute("DELETE FROM process_identities WHERE last_seen < $1",
                                         cutoff)
            deleting = time.perf_counter() - started
            started = time.perf_counter()
            changed = await conn.fetchval("SELECT process_names_forget($1)", cutoff)
            print(f"\nretention at 7 d: {deleted.split()[-1]} identities deleted in "
                  f"{deleting:.1f} s; process_names_forget: {changed:,} names changed or "
                  f"deleted in {time.perf_counter() - started:.2f} s")
    finally:
        await pool.close()


async def with_database(admin_url: str, args: argparse.Namespace) -> None:
    async with scratch_database(admin_url, "inventory") as url:
        await run(url, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--long", type=int, default=300, help="long-lived processes per host")
    parser.add_argument("--short", type=int, default=1400,
                        help="short-lived processes per host and day")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="10 hosts x 3 days, 5 runs")
    parser.add_argument("--explain", action="store_true", help="print the new plans")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.days, args.runs = 10, 3, 5
    run_on_postgres(lambda admin_url: with_database(admin_url, args), "inventory")


if __name__ == "__main__":
    main()
