"""Fleet benchmark: simulated agents → real gateway → Valkey → workers → PostgreSQL, on this box.

    python bench/bench_fleet.py [--hosts 2500] [--interval 15] [--duration 60] [--warmup 15]
                                [--workers 4] [--gateways 2] [--naive-duration 60]
                                [--load-processes 2] [--cluster valkey|redis]

Two pipelines, one after the other in the same run, on the same embedded servers (Valkey with
AOF, PostgreSQL with ``track_commit_timestamp``), each into a fresh database and fresh streams:

- engineered: ``procfleet gateway`` × G + ``procfleet worker`` × N (batches, COPY, pipelined);
- naive: the same gateways + the consumer we started from × N (bench/fleet_naive.py: reads of
  10, one INSERT per row).

The load is ``--hosts`` simulated agents (bench/fleet_load.py: 300 processes + 20 groups each,
moving counters, distinct server ids, gzip) reporting every ``--interval`` seconds with a random
phase, spread over ``--load-processes`` child processes. After ``--warmup`` (every host has
reported once), ``--duration`` seconds are measured: process rows (process_samples +
process_group_samples) committed per second, latency collected → queryable per report from the
commit timestamps, the backlog (lag + pending) every second, and the CPU of every component
from /proc. Then the engineered pipeline drains and every acknowledged report is checked to
be complete. Embedded servers are used unless REDIS_URL / DATABASE_URL are set (latency needs
``track_commit_timestamp = on`` on such a server).

``--cluster ENGINE`` adds a third pipeline after those two, the engineered one again over a
local cluster of 3 masters + 3 replicas of ``valkey`` (the wheel's) or ``redis`` (the
machine's), started here (tests/support/redis_cluster.py) with ``--cluster-shards`` shards:
the same load, side by side with the single Valkey, with the CPU of every node ("valkey"
then sums the masters and replicas; "valkey masters" / "busiest master" split it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench.fleet_load import expected_rows, read_reports  # noqa: E402
from bench.fleet_measure import (  # noqa: E402
    CpuProbe,
    backlog,
    bytes_per_row,
    landed,
    reference_loop_ms,
)
from bench.fleet_report import Run, print_results  # noqa: E402
from digest_worker import partitions  # noqa: E402
from ingest_gateway import stream  # noqa: E402
from ingest_gateway.auth import TokenStore  # noqa: E402
from ingest_gateway.ingest.cluster import open_client  # noqa: E402
from migrations.runner import migrate  # noqa: E402
from procfleet.embedded import EmbeddedPostgres, EmbeddedValkey, free_port  # noqa: E402
from procfleet.stack import Child  # noqa: E402

BENCH = Path(__file__).resolve().parent
SHARDS = 4
DRAIN_TIMEOUT_S = 300.0
# The load runs a little past the window so the CPU probe sees its processes alive at the end.
LOAD_TAIL_S = 5.0


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def fresh_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        # Both pipelines write into today's partition from the first row.
        await partitions.run_upkeep(conn, datetime.now(UTC).date(), 7, 1)
    finally:
        await conn.close()
    return url


async def reset_streams(redis: Redis) -> None:
    """Delete the streams, dedupe keys and shard count of a previous run (tokens stay)."""
    doomed = [key async for key in redis.scan_iter(match=f"{stream.KEY_PREFIX}*", count=5000)
              if key != stream.TOKENS_KEY.encode()]
    if hasattr(redis, "nodes_manager"):  # a cluster: one key (one slot) per DEL
        for key in doomed:
            await redis.delete(key)
        return
    for i in range(0, len(doomed), 5000):
        await redis.delete(*doomed[i:i + 5000])


async def wait_ready(url: str, child: Child, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if not child.alive():
                raise SystemExit(f"{child.name} exited:\n{child.log_tail()}")
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{child.name} not ready in {timeout_s}s:\n{child.log_tail()}")


async def loads_ready(loads: list[Child], timeout_s: float = 120.0) -> float:
    """When the last load process had built its hosts and started sending (epoch seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = []
        for child in loads:
            if not child.alive():
                raise SystemExit(f"{child.name} exited:\n{child.log_tail()}")
            text = child.log_path.read_text() if child.log_path.exists() else ""
            ready += [orjson.loads(line)["ready_at"] for line in text.splitlines()
                      if line.startswith('{"ready_at"')]
        if len(ready) == len(loads):
            return max(ready)
        await asyncio.sleep(0.2)
    raise SystemExit(f"load generators not ready in {timeout_s}s")


async def run_pipeline(name: str, args: argparse.Namespace, redis_url: str, admin_url: str,
                       token_file: Path, scratch: Path) -> Run:
    engineered = name != "naive"
    duration_s = args.duration if engineered else args.naive_duration
    shards = args.cluster_shards if name == "cluster" else SHARDS
    run = Run(name, args.hosts / args.interval, duration_s)
    database_url = await fresh_database(admin_url, f"fleet_{name}")
    redis = await open_client(redis_url, 10)
    await reset_streams(redis)
    logs = scratch / "logs" / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCFLEET_")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, PROCFLEET_SHARDS=str(shards),
               PROCFLEET_RATE_LIMIT_PER_S="0", PROCFLEET_WORKER_SUMMARY_INTERVAL_S="10",
               PROCFLEET_WAIT_AOF="true" if args.wait_aof else "false")
    procfleet = [sys.executable, "-m", "procfleet"]
    # Gateways are stateless: N processes on N ports, each load process sends to one of them
    # (what a load balancer in front of them would do).
    ports = [free_port() for _ in range(args.gateways)]
    gateways = [Child(f"gateway-{n}", [*procfleet, "gateway", "--port", str(port)], env,
                      logs / f"gateway-{n}.log") for n, port in enumerate(ports)]
    for gateway in gateways:
        gateway.start()
    for gateway, port in zip(gateways, ports, strict=True):
        await wait_ready(f"http://127.0.0.1:{port}", gateway)
    if engineered:
        consumers = [Child(f"worker-{n}", [*procfleet, "worker", "--no-migrate"],
                           {**env, "PROCFLEET_WORKER_CONSUMER": f"bench-{n}"},
                           logs / f"worker-{n}.log") for n in range(args.workers)]
    else:
        consumers = [Child(f"naive-{n}", [sys.executable, str(BENCH / "fleet_naive.py"),
                                          redis_url, database_url, f"naive-{n}", str(SHARDS)],
                           env, logs / f"naive-{n}.log") for n in range(args.workers)]
    for child in consumers:
        child.start()
    loads, outs = [], []
    share = -(-args.hosts // args.load_processes)
    for k in range(args.load_processes):
        hosts = min(share, args.hosts - k * share)
        outs.append(scratch / f"{name}-load-{k}.jsonl")
        # Niced: the simulated agents stand for hosts elsewhere, the pipeline goes first.
        loads.append(Child(f"load-{k}", [
            "nice", "-n", str(args.load_nice), sys.executable, str(BENCH / "fleet_load.py"),
            "--gateway", f"http://127.0.0.1:{ports[k % len(ports)]}",
            "--token-file", str(token_file), "--hosts", str(hosts), "--interval",
            str(args.interval), "--duration", str(args.warmup + duration_s + LOAD_TAIL_S),
            "--prefix", f"{name}{k}-{uuid.uuid4().hex[:4]}", "--seed", str(k + 1),
            "--compress-level", str(args.compress_level), "--out", str(outs[-1])],
            env, logs / f"load-{k}.log"))
    probe = CpuProbe({
        "gateway": [g.proc.pid for g in gateways], "workers": [c.proc.pid for c in consumers],
        "load generator": [], **valkey_roots(args, name),
        "postgres": [args.postgres_pid] if args.postgres_pid else []})
    for child in loads:
        child.start()
    probe.roots["load generator"] = [c.proc.pid for c in loads]
    started = await loads_ready(loads)
    window = (started + args.warmup, started + args.warmup + duration_s)
    probing = False
    print(f"{name}: {args.hosts} hosts every {args.interval:g} s "
          f"({run.offered_reports_s:.0f} reports/s offered); warmup {args.warmup:g} s, "
          f"measuring {duration_s:g} s", flush=True)
    while any(c.alive() for c in loads):
        now = time.time()
        if not probing and now >= window[0]:
            probe.start()
            probing = True
        depth = await backlog(redis, shards)
        if window[0] <= now < window[1]:
            run.backlog_samples.append(depth)
        if probing and now >= window[1] and not run.cores:
            run.cores = probe.stop(now - window[0])
        if int(now - started) % 10 == 0:
            print(f"  t={now - started:5.0f}s backlog={depth:>9,}", flush=True)
        await asyncio.sleep(1.0 - (time.time() - now) % 1.0)
    if not run.cores:
        run.cores = probe.stop(time.time() - window[0])
    run.backlog_end = await backlog(redis, shards)
    if engineered:
        drain_started = time.monotonic()
        while await backlog(redis, shards) and time.monotonic() - drain_started < DRAIN_TIMEOUT_S:
            await asyncio.sleep(0.5)
        run.drain_s = time.monotonic() - drain_started
    for child in [*consumers, *gateways]:
        child.stop()
    await redis.aclose()
    reports = [r for out in outs for r in read_reports(out)]
    result = await landed(database_url)
    run.bytes_per_row = await bytes_per_row(database_url, sum(n for _, n in
                                                              result.reports.values()))
    run.rows_in_window = result.rows_between(*window)
    run.rows_accepted_in_window = sum(r.processes + r.groups for r in reports
                                      if r.acked and window[0] <= r.acked_s < window[1])
    in_window = [r for r in reports if window[0] <= r.collected_at_us / 1e6 < window[1]]
    run.reports_in_window = len(in_window)
    run.latencies_s = result.latencies_s(*window)
    run.reports_landed_in_window = len(run.latencies_s)
    if engineered:
        want = expected_rows(reports)
        complete = sum(result.reports.get(key, (0, 0))[1] == n + want[
            "process_group_samples"].get(key, 0) for key, n in want["process_samples"].items())
        run.complete = f"{complete:,}/{len(want['process_samples']):,}"
    return run


def valkey_roots(args: argparse.Namespace, name: str) -> dict[str, list[int]]:
    """The CPU probe's Redis trees: the single Valkey, or every node of the cluster."""
    if name != "cluster":
        return {"valkey": [args.valkey_pid] if args.valkey_pid else []}
    cluster = args.cluster_servers
    masters = [n.proc.pid for n in cluster.current_masters()]
    roots = {"valkey": [n.proc.pid for n in cluster.nodes],
             "valkey masters": masters}
    roots.update({f"master {k}": [pid] for k, pid in enumerate(masters)})
    return roots


async def prepare(redis_url: str, token_file: Path) -> None:
    redis = await open_client(redis_url, 10)
    try:
        _, token = await TokenStore(redis).create("ingest", "bench_fleet")
    finally:
        await redis.aclose()
    token_file.write_text(token)
    token_file.chmod(0o600)


async def enable_commit_timestamps(server: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    finally:
        await conn.close()
    server.stop()  # the setting needs a restart
    server.start()


async def main(args: argparse.Namespace, scratch: Path) -> None:
    servers: list = []
    redis_url, admin_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    args.valkey_pid = args.postgres_pid = None
    try:
        if not redis_url:
            valkey = EmbeddedValkey(scratch / "valkey")
            valkey.start()
            servers.append(valkey)
            redis_url, args.valkey_pid = valkey.url, valkey.pid
        if not admin_url:
            postgres = EmbeddedPostgres(scratch / "pgdata")
            postgres.start()
            servers.append(postgres)
            await enable_commit_timestamps(postgres)
            admin_url, args.postgres_pid = postgres.url, postgres.pid
        token_file = scratch / "token"
        await prepare(redis_url, token_file)
        runs = [await run_pipeline("engineered", args, redis_url, admin_url, token_file,
                                   scratch)]
        if args.naive_duration > 0:
            runs.append(await run_pipeline("naive", args, redis_url, admin_url, token_file,
                                           scratch))
        if args.cluster:
            from tests.support.redis_cluster import LocalCluster

            cluster = LocalCluster(args.cluster, scratch / "cluster").start()
            servers.append(cluster)
            args.cluster_servers = cluster
            cluster_token = scratch / "cluster-token"
            await prepare(cluster.url(), cluster_token)
            runs.append(await run_pipeline("cluster", args, cluster.url(), admin_url,
                                           cluster_token, scratch))
            print_cluster(runs[-1])
        print_results(runs, args)
        print(f"box speed: the reference loop (bench/fleet_measure.py) took "
              f"{reference_loop_ms():.0f} ms of one core after the run")
    finally:
        for server in servers:
            server.stop()
        # As root, PostgreSQL's data lives under procfleet's private root, not in the scratch
        # directory main's caller deletes; --keep keeps everything for a look.
        if not args.keep and not os.environ.get("DATABASE_URL"):
            for server in servers:
                if isinstance(server, EmbeddedPostgres):
                    server.remove()


def print_cluster(run: Run) -> None:
    """What one master costs: CPU per accepted row, all masters and the busiest one."""
    rows_s = max(run.accepted_rows_per_s, 1e-9)
    masters = {k: v for k, v in run.cores.items() if k.startswith("master ")}
    busiest = max(masters.values(), default=0.0)
    print(f"cluster: nodes {run.cores.get('valkey', 0):.2f} cores, masters "
          f"{run.cores.get('valkey masters', 0):.2f} cores "
          f"({run.cores.get('valkey masters', 0) / rows_s * 1e6:.1f} us per row), busiest "
          f"master {busiest:.2f} cores ({busiest / rows_s * 1e6:.1f} us per row of the whole "
          f"load), replicas {run.cores.get('valkey', 0) - run.cores.get('valkey masters', 0):.2f}"
          f" cores", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2500)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4, help="consumer processes")
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes")
    parser.add_argument("--wait-aof", action="store_true",
                        help="gateways answer after the AOF fsync (PROCFLEET_WAIT_AOF)")
    parser.add_argument("--naive-duration", type=float, default=60.0, help="0 skips it")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--cluster", choices=("valkey", "redis"),
                        help="also run the engineered pipeline over a local 3+3 cluster")
    parser.add_argument("--cluster-shards", type=int, default=12,
                        help="PROCFLEET_SHARDS on the cluster (spread over its masters)")
    parser.add_argument("--load-nice", type=int, default=10,
                        help="nice value of the load generator processes (0: same priority)")
    parser.add_argument("--compress-level", type=int, default=1,
                        help="gzip level of the simulated agents (the agent uses 6)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    arguments = parser.parse_args()
    scratch_dir = Path(tempfile.mkdtemp(prefix="procfleet-bench-fleet-"))
    scratch_dir.chmod(0o755)
    try:
        asyncio.run(main(arguments, scratch_dir))
    finally:
        if arguments.keep:
            print(f"kept {scratch_dir}")
        else:
            shutil.rmtree(scratch_dir, ignore_errors=True)
