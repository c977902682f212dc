"""Digest workers: rows/s landed in PostgreSQL from a pre-filled stream, side by side with
the limit and the design we started from.

    python bench/bench_writer.py [--messages 200000] [--naive-messages 10000] [--rounds 3]

In one run, on the same rows (reports of 300 processes + 20 groups + 1 snapshot + 1 host
message, 4 shards), each run starting from empty tables:

- raw COPY: ``copy_records_to_table`` of the same rows straight into the tables, batches of
  5000, one transaction each, with asyncpg's default codecs (rows prepared beforehand with
  ``datetime`` values: the cost of building them is not counted) — the limit; and the same
  with the worker's epoch-seconds timestamp codec;
- naive: XREADGROUP COUNT 10, one INSERT per row in a transaction per read, XACK;
- writer only: ``BatchWriter.commit`` per insert method (copy / staging / unnest), no Redis;
- worker: one ``Worker`` process per insert method draining the stream (``burst``), then two
  worker processes together. rows/s = entries / (end of the last batch - start of
  consumption).

Every phase also reports the CPU it cost per row: the client (the bench process, or the worker
processes), and, when the bench started the servers itself, PostgreSQL (postmaster and
backends) and Redis, from /proc. Printed: the best rate of each phase, its ratios to the
baselines measured in the same round (median over the rounds: the box is shared, figures only
compare when taken close together), and the lowest CPU per row of the rounds.

Uses an embedded PostgreSQL and Valkey unless ``DATABASE_URL`` / ``REDIS_URL`` are set; it
creates (and drops) its own database and deletes the streams it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.fleet_measure import tree_cpu_s as process_tree_cpu_s  # noqa: E402
from digest_worker import partitions, redis_client  # noqa: E402
from digest_worker.rows import (  # noqa: E402
    TABLE_COLUMNS,
    TABLE_OF_KIND,
    TABLE_TARGET,
    build_rows,
)
from digest_worker.settings import WorkerSettings  # noqa: E402
from digest_worker.timestamps import UNKNOWN_START_TIME, install_codec  # noqa: E402
from digest_worker.worker import Worker, tune_gc  # noqa: E402
from digest_worker.writer import BatchWriter  # noqa: E402
from ingest_gateway import stream  # noqa: E402
from migrations.runner import migrate  # noqa: E402

SHARDS = 4
BATCH = 5000


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds of process ``pid`` and its children (PostgreSQL's backends, reaped ones
    included); 0 when unknown (servers given by URL)."""
    return 0.0 if pid is None else process_tree_cpu_s(pid)


def rfc3339(seconds: float) -> str:
    """A start time as the gateway puts it in a message (stream schema 2)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def make_messages(count: int, now_s: float) -> list[tuple[str, tuple]]:
    """``count`` messages shaped like real reports, one report per host per 15 s."""
    out: list[tuple[str, tuple]] = []
    start_times = [rfc3339(now_s - 3 * 86400 + j) for j in range(300)]
    report = 0
    while len(out) < count:
        host, ts = report % 97, now_s - 3600 + (report // 97) * 15
        sid = f"bench-host-{host:03d}"
        out.append(("h", (sid, ts, f"r{report:012d}", f"web-{host}", "linux", "6.8.0", None,
                          "0.1.0")))
        out.append(("s", (sid, ts, "ps", f"{report:064x}", 300, 0, None)))
        out += [("g", (sid, ts, f"group-{g}", 3, 10.5 + report, 2.5, 10_000_000, 20_000_000,
                       0, 12, 40, 1000, 2000, 1, 2, 3, 4, rfc3339(ts - 86400)))
                for g in range(20)]
        out += [("p", (sid, ts, 1000 + j, start_times[j], 1 + j // 10,
                       "www-data" if j % 3 else "root", f"worker-{j % 40}",
                       f"/usr/bin/python3 -m app.worker --queue q{j % 7} --concurrency 4",
                       "S", 12.25 + j + report, 0.5, 0.8, 123_456_789 + j, 987_654_321,
                       None, None, None)) for j in range(300)]
        report += 1
    return out[:count]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def create_database(admin_url: str) -> str:
    name = f"procfleet_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = with_database(admin_url, name)
    await migrate(url)
    conn = await asyncpg.connect(url)
    await partitions.run_upkeep(conn, datetime.now(UTC).date(), 7, 1)
    await conn.close()
    return url


async def truncate(url: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE servers, snapshots, process_group_points, process_points, "
                       "process_identities, process_groups, process_history, history_clock, "
                       "process_group_history, group_history_clock")
    await conn.execute("VACUUM ANALYZE")  # each run starts from the same state
    await conn.close()


async def prefill(redis_url: str, messages: list) -> None:
    client = redis_client.connect(redis_url, 30)
    await client.delete(*[stream.sample_stream(n) for n in range(SHARDS)])
    await client.set(stream.SHARDS_KEY, SHARDS)
    pipe = client.pipeline(transaction=False)
    for i, (kind, row) in enumerate(messages, start=1):
        pipe.xadd(stream.sample_stream(stream.shard_for(row[0], SHARDS)), stream.encode(kind, row))
        if i % 5000 == 0:
            await pipe.execute()
    await pipe.execute()
    for shard in range(SHARDS):
        await client.xgroup_create(stream.sample_stream(shard), stream.GROUP, id="0",
                                   mkstream=True)  # a small run may leave a shard empty
    await client.aclose()


def raw_records(messages: list, worker_codec: bool) -> dict[str, list[tuple]]:
    """The rows of ``messages`` per table, with ``datetime`` timestamps for asyncpg's default
    codec (built before the timing starts) or epoch seconds for the worker's codec."""
    tables = {t: r for t, r in build_rows(messages).tables.items() if r}
    if worker_codec:
        return tables

    def dt(value):
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        return datetime.fromtimestamp(value, UTC) if value is not None else None

    return {  # points: (key, ts, ...); group points carry oldest_start_time at 13
        "process_samples": [(r[0], dt(r[1]), *r[2:]) for r in tables["process_samples"]],
        "process_group_samples": [(r[0], dt(r[1]), *r[2:13], dt(r[13]), *r[14:])
                                  for r in tables["process_group_samples"]],
        "snapshots": [(r[0], dt(r[1]), *r[2:]) for r in tables["snapshots"]],
    }


async def raw_copy(url: str, tables: dict[str, list[tuple]], worker_codec: bool) -> float:
    conn = await asyncpg.connect(url)
    if worker_codec:
        await install_codec(conn)
    started = time.perf_counter()
    rows = 0
    for table, records in tables.items():
        rows += len(records)
        for i in range(0, len(records), BATCH):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    TABLE_TARGET[table], records=records[i:i + BATCH],
                    columns=TABLE_COLUMNS[table])
    elapsed = time.perf_counter() - started
    await conn.close()
    return rows / elapsed


async def naive(redis_url: str, url: str, count: int) -> float:
    """The design we started from: reads of 10, one INSERT per row, XACK per read."""
    client = redis_client.connect(redis_url, 30)
    keys = [stream.sample_stream(n) for n in range(SHARDS)]
    conn = await asyncpg.connect(url)
    # One row at a time through the old tables' columns (now views whose insert trigger
    # writes the identity and the point): the per-row cost of that design.
    inserts = {
        table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
               f"({', '.join(f'${i}' for i in range(1, len(cols) + 1))})"
        for table, cols in ((TABLE_OF_KIND[kind], tuple(
            "username" if c == "user" else c for c in stream.COLUMNS[kind]))
            for kind in TABLE_OF_KIND)
    }
    upsert = ("INSERT INTO servers (server_id, hostname, first_seen_at, last_seen_at) "
              "VALUES ($1, $2, $3, $3) ON CONFLICT (server_id) DO UPDATE SET "
              "last_seen_at = EXCLUDED.last_seen_at")
    await install_codec(conn)
    done, started = 0, time.perf_counter()
    while done < count:
        reply = await client.execute_command(
            "XREADGROUP", "GROUP", stream.GROUP, "naive", "COUNT", 10, "STREAMS", *keys,
            *[">"] * SHARDS)
        if not reply:
            break
        for key, items in reply:
            async with conn.transaction():
                for _id, fields in items:
                    kind, row = stream.decode(dict(zip(fields[::2], fields[1::2], strict=True)))
                    if kind == "h":
                        await conn.execute(upsert, row[0], row[3], row[1])
                    else:
                        if kind == "p" and row[3] is None:
                            row = (*row[:3], UNKNOWN_START_TIME, *row[4:])
                        await conn.execute(inserts[TABLE_OF_KIND[kind]], *row)
            await client.xack(key, stream.GROUP, *[i for i, _ in items])
            done += len(items)
    elapsed = time.perf_counter() - started
    await conn.close()
    await client.aclose()
    return done / elapsed


async def writer_only(url: str, messages: list, method: str) -> float:
    writer = BatchWriter(method)
    conn = await asyncpg.connect(url)
    await writer.prepare(conn)
    started = time.perf_counter()
    for i in range(0, len(messages), BATCH):
        await writer.commit(conn, messages[i:i + BATCH])
    elapsed = time.perf_counter() - started
    await conn.close()
    return len(messages) / elapsed


def _worker_child(settings: WorkerSettings, results) -> None:
    tune_gc()  # as `procfleet worker` does
    cpu_s = time.process_time()
    summary = asyncio.run(Worker(settings).run())
    results.put((summary.rows, summary.consuming_since, summary.last_batch_done,
                 time.process_time() - cpu_s))


def run_workers(processes: int, settings: WorkerSettings, outcome: dict[str, float]) -> float:
    """rows/s of ``processes`` burst workers draining the stream; ``outcome["cpu_s"]`` gets
    their CPU seconds."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    children = [ctx.Process(target=_worker_child, args=(
        settings.with_overrides(consumer_name=f"bench-{n}-{uuid.uuid4().hex[:6]}"), results))
        for n in range(processes)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    rows = sum(o[0] for o in outcomes)
    outcome["cpu_s"] = sum(o[3] for o in outcomes)
    return rows / (max(o[2] for o in outcomes) - min(o[1] for o in outcomes))


class CpuMeter:
    """µs of CPU per row of the servers (embedded ones only: their pids are known) and of the
    client over one phase; ``client_cpu_s`` is set by phases whose client is another process."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.client_cpu_s: float | None = None

    def __enter__(self) -> CpuMeter:
        self._servers = {name: tree_cpu_s(pid) for name, pid in self.pids.items()}
        self._client = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        # A closed backend's CPU shows in the postmaster's cutime only once it is reaped.
        time.sleep(0.5)
        self._servers = {name: tree_cpu_s(pid) - self._servers[name]
                         for name, pid in self.pids.items()}
        if self.client_cpu_s is None:
            self.client_cpu_s = time.process_time() - self._client

    def per_row(self, rows: int) -> dict[str, float]:
        return {"client": self.client_cpu_s / rows * 1e6,
                **{name: cpu_s / rows * 1e6 for name, cpu_s in self._servers.items()}}


async def main(args: argparse.Namespace, redis_url: str, admin_url: str,
               pids: dict[str, int | None]) -> None:
    url = await create_database(admin_url)
    messages = make_messages(args.messages, time.time())
    settings = WorkerSettings(redis_url=redis_url, database_url=url, burst=True,
                              batch_size=BATCH, shards=SHARDS)
    figures: dict[str, list[float]] = {}
    cpu_rows: dict[str, list[dict[str, float]]] = {}

    def record(name: str, value: float, meter: CpuMeter | None = None) -> None:
        figures.setdefault(name, []).append(value)
        if meter is not None:
            cpu_rows.setdefault(name, []).append(meter.per_row(len(messages)))
        print(f"  {name:34s} {value:>10,.0f} rows/s", flush=True)

    async def worker_run(name: str, processes: int, method: str = "copy") -> None:
        await truncate(url)
        await prefill(redis_url, messages)
        outcome: dict[str, float] = {}
        with CpuMeter(pids) as meter:
            rate = run_workers(processes, settings.with_overrides(insert_method=method), outcome)
            meter.client_cpu_s = outcome["cpu_s"]
        record(name, rate, meter)

    try:
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}: {len(messages):,} messages", flush=True)
            await truncate(url)
            await prefill(redis_url, messages[:args.naive_messages])
            record("naive (COUNT 10, INSERT per row)",
                   await naive(redis_url, url, args.naive_messages))
            for method in ("copy", "staging", "unnest"):
                await truncate(url)
                with CpuMeter(pids) as meter:
                    rate = await writer_only(url, messages, method)
                record(f"writer only, {method}", rate, meter)
            # the limit, right before the workers it is compared with
            for codec in ("default", "worker"):
                await truncate(url)
                tables = raw_records(messages, codec == "worker")
                with CpuMeter(pids) as meter:
                    rate = await raw_copy(url, tables, codec == "worker")
                record(f"raw COPY ({codec} codec)", rate, meter)
            for method in ("copy", "staging", "unnest"):
                await worker_run(f"1 worker process, {method}", 1, method)
            await worker_run("2 worker processes, copy", 2)
    finally:
        client = redis_client.connect(redis_url, 30)
        await client.delete(stream.SHARDS_KEY, *[stream.sample_stream(n) for n in range(SHARDS)])
        await client.aclose()
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')
        await conn.close()
    report(figures, cpu_rows, args.rounds)


def report(figures: dict[str, list[float]], cpu_rows: dict[str, list[dict[str, float]]],
           rounds: int) -> None:
    """Best rate of each phase, and its ratios to the baselines *of the same round* (the
    median over the rounds): the box is shared, so only figures taken close together in time
    compare."""
    raw = figures["raw COPY (default codec)"]
    raw_codec = figures["raw COPY (worker codec)"]
    base = figures["naive (COUNT 10, INSERT per row)"]

    def ratio(values: list[float], baseline: list[float]) -> float:
        return statistics.median(v / b for v, b in zip(values, baseline, strict=True))

    print(f"\n{rounds} round(s): best rows/s, median same-round ratio   x raw COPY  "
          f"x raw COPY (worker codec)  x naive")
    order = ["raw COPY (default codec)", "raw COPY (worker codec)",
             "naive (COUNT 10, INSERT per row)"]
    for name in sorted(figures, key=lambda n: order.index(n) if n in order else len(order)):
        values = figures[name]
        print(f"{name:34s} {max(values):>10,.0f} {ratio(values, raw):>10.2f} "
              f"{ratio(values, raw_codec):>14.2f} {ratio(values, base):>19.1f}")
    print("\nCPU µs per row (lowest of the rounds)   client  PostgreSQL   Redis   total")
    for name in sorted(cpu_rows, key=lambda n: order.index(n) if n in order else len(order)):
        runs = cpu_rows[name]
        low = {k: min(r.get(k, 0.0) for r in runs) for k in ("client", "postgres", "redis")}
        print(f"{name:38s} {low['client']:>7.1f} {low['postgres']:>11.1f} {low['redis']:>7.1f} "
              f"{sum(low.values()):>7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--naive-messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="procfleet-bench-"))
    scratch.chmod(0o755)
    servers = []
    pids: dict[str, int | None] = {"postgres": None, "redis": None}
    try:
        redis_url, admin_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
        if not redis_url or not admin_url:
            from procfleet.embedded import EmbeddedPostgres, EmbeddedValkey
        if not redis_url:
            servers.append(EmbeddedValkey(scratch / "valkey"))
            servers[-1].start()
            redis_url, pids["redis"] = servers[-1].url, servers[-1].pid
        if not admin_url:
            servers.append(EmbeddedPostgres(scratch / "pgdata"))
            servers[-1].start()
            admin_url, pids["postgres"] = servers[-1].url, servers[-1].pid
        asyncio.run(main(arguments, redis_url, admin_url, pids))
    finally:
        for server in servers:
            server.remove()
        shutil.rmtree(scratch, ignore_errors=True)
