"""Enqueue path of the gateway: naive redis-py pipeline vs the fast path, side by side.

    python bench/bench_enqueue.py [--reports 200] [--processes 300] [--concurrency 8] [--rounds 3]
                                  [--wait-aof]

Both paths start from validated ``Report`` objects and put one stream message per process (+ one
``h`` per report) into the report's shard:

- naive: ``redis.asyncio`` pipeline per report, ``pipe.xadd(key, stream.encode(kind, row))``;
- fast: ``messages.report_messages`` + ``Enqueuer.enqueue`` (pre-framed RESP on a raw
  connection, hiredis reply parsing, every reply checked), *including* its dedupe round trips
  (``EXISTS`` before, ``SET EX`` after), which the naive path does not pay.

Then the full HTTP path (auth, body read, pydantic validation, clock checks, enqueue) through a
real gateway on a local port, with an aiohttp client in the same process (so the figure is
pessimistic: client and server share one core budget). Runs are interleaved and the best of
``--rounds`` is kept. Besides messages/s it prints the CPU time per message of this process and
of the Redis server: on a shared, noisy box those are the steadier figures.

Uses an embedded Valkey (AOF on, like ``procfleet up``) unless ``REDIS_URL`` is set (give it
a spare db, e.g. ``/9``: the bench deletes the procfleet streams of that db after every run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from agent.contract import Report  # noqa: E402
from ingest_gateway import stream  # noqa: E402
from ingest_gateway.app import create_app  # noqa: E402
from ingest_gateway.app_state import STATE  # noqa: E402
from ingest_gateway.auth import TokenStore  # noqa: E402
from ingest_gateway.ingest.durability import AofBarrier  # noqa: E402
from ingest_gateway.ingest.enqueue import Enqueuer  # noqa: E402
from ingest_gateway.ingest.fast_contract import validate_report  # noqa: E402
from ingest_gateway.ingest.messages import report_messages  # noqa: E402
from ingest_gateway.ingest.resp import ConnectParams, RespPool  # noqa: E402
from ingest_gateway.server import tune_gc  # noqa: E402
from ingest_gateway.settings import GatewaySettings  # noqa: E402

SHARDS = 4
MAX_RAW_OUTPUT_BYTES = 1 << 20


def make_report(index: int, processes: int, now: datetime) -> Report:
    """A realistic Linux report: varied names and command lines, start times, counters."""
    started = now - timedelta(days=3)
    return Report.model_validate_json(orjson.dumps({
        "report_id": f"bench-{index:08d}-{time.monotonic_ns()}",
        "host": {"server_id": f"bench-host-{index % 97:03d}", "hostname": f"web-{index % 97}",
                 "os_type": "linux", "os_version": "6.8.0", "agent_version": "0.1.0"},
        "collected_at": now.isoformat(),
        "processes": [{
            "pid": 1000 + j, "ppid": 1 + j // 10, "user": "www-data" if j % 3 else "root",
            "name": f"worker-{j % 40}",
            "command": f"/usr/bin/python3 -m app.worker --queue q{j % 7} --concurrency 4",
            "state": "S", "start_time": (started + timedelta(seconds=j)).isoformat(),
            "cpu_seconds_total": 12.25 + j, "cpu_percent": 0.5, "memory_percent": 0.8,
            "rss_bytes": 123_456_789 + j, "vsz_bytes": 987_654_321, "tty": None,
        } for j in range(processes)],
    }))


def naive_rows(report: Report) -> list[tuple[str, tuple]]:
    """Rows the straightforward way (per-attribute reads, datetime → epoch)."""
    host, ts = report.host, report.collected_at.timestamp()
    rows = [(stream.KIND_HOST, (host.server_id, ts, report.report_id, host.hostname,
                                host.os_type, host.os_version, host.boot_id,
                                host.agent_version))]
    for p in report.processes:
        rows.append((stream.KIND_PROCESS, (
            host.server_id, ts, p.pid, p.start_time.timestamp() if p.start_time else None,
            p.ppid, p.user, p.name, p.command, p.state, p.cpu_seconds_total, p.cpu_percent,
            p.memory_percent, p.rss_bytes, p.vsz_bytes, p.tty, p.session_name, p.session_id)))
    return rows


async def run_concurrently(items, worker, concurrency: int) -> float:
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def drain() -> None:
        while not queue.empty():
            await worker(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(drain() for _ in range(concurrency)))
    return time.perf_counter() - started


async def clear_streams(redis: Redis) -> None:
    keys = [stream.sample_stream(s) for s in range(SHARDS)]
    await redis.delete(*keys)
    async for key in redis.scan_iter(match=stream.report_seen_key("bench-*"), count=1000):
        await redis.delete(key)


async def bench_naive(redis: Redis, reports: list[Report], concurrency: int) -> float:
    async def one(report: Report) -> None:
        key = stream.sample_stream(stream.shard_for(report.host.server_id, SHARDS))
        pipe = redis.pipeline(transaction=False)
        for kind, row in naive_rows(report):
            pipe.xadd(key, stream.encode(kind, row))
        await pipe.execute()

    return await run_concurrently(reports, one, concurrency)


async def bench_fast(enqueuer: Enqueuer, reports: list[Report], concurrency: int) -> float:
    async def one(report: Report) -> None:
        messages = report_messages(report, shards=SHARDS,
                                   max_raw_output_bytes=MAX_RAW_OUTPUT_BYTES)
        result = await enqueuer.enqueue(messages)
        assert not result.duplicate

    return await run_concurrently(reports, one, concurrency)


async def bench_validate(enqueuer: Enqueuer, bodies: list[bytes], concurrency: int) -> float:
    """What the handler does per report, without HTTP: validate, encode, enqueue."""
    async def one(body: bytes) -> None:
        report = validate_report(body)  # as the route does
        messages = report_messages(report, shards=SHARDS,
                                   max_raw_output_bytes=MAX_RAW_OUTPUT_BYTES)
        assert not (await enqueuer.enqueue(messages)).duplicate

    return await run_concurrently(bodies, one, concurrency)


async def bench_http(url: str, redis: Redis, bodies: list[bytes], concurrency: int) -> float:
    settings = GatewaySettings(redis_url=url, shards=SHARDS, rate_limit_per_s=0)
    app = create_app(settings)
    server = TestServer(app, port=0)
    await server.start_server()
    try:
        _, token = await TokenStore(redis).create("ingest", "bench")
        await app[STATE].tokens.refresh()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(body: bytes) -> None:
                async with session.post(server.make_url("/v1/reports"), data=body,
                                        headers=headers) as response:
                    assert response.status == 202, (response.status, await response.text())

            return await run_concurrently(bodies, one, concurrency)
    finally:
        await server.close()


async def redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measured(redis: Redis, run) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, the Redis server's CPU s) of one run."""
    await clear_streams(redis)
    cpu, server_cpu = time.process_time(), await redis_cpu_s(redis)
    wall = await run()
    return wall, time.process_time() - cpu, await redis_cpu_s(redis) - server_cpu


async def main(args: argparse.Namespace, url: str) -> None:
    redis = Redis.from_url(url, protocol=2)
    info = await redis.info("server")
    version = info.get("valkey_version") or info["redis_version"]
    aof = (await redis.config_get("appendonly"))["appendonly"]
    fsync = (await redis.config_get("appendfsync"))["appendfsync"]
    pool = RespPool(ConnectParams.from_redis(redis), size=args.concurrency, timeout_s=10)
    enqueuer = Enqueuer(pool, shards=SHARDS, dedupe_ttl_s=60, timeout_s=10, retry_after_s=1)
    durable = None
    if args.wait_aof:
        barrier = AofBarrier(pool, wait_aof_timeout_ms=2000, timeout_s=10, retry_after_s=1)
        durable = Enqueuer(pool, shards=SHARDS, dedupe_ttl_s=60, timeout_s=10,
                           retry_after_s=1, barrier=barrier)
    per_report = args.processes + 1
    total = args.reports * per_report
    conc = args.concurrency
    print(f"server: {info.get('server_name', 'redis')} {version}, appendonly={aof} "
          f"appendfsync={fsync}; {args.reports} reports x {args.processes} processes "
          f"(+1 host message) = {total} messages per run; concurrency {args.concurrency}")
    best: dict[str, tuple[float, float, float]] = {}
    ratios: list[float] = []  # naive wall / fast wall, within one round (same conditions)
    for round_no in range(args.rounds):
        now = datetime.now(UTC)
        reports = [make_report(i, args.processes, now) for i in range(args.reports)]
        bodies = [make_report(i, args.processes, now).model_dump_json().encode()
                  for i in range(args.reports)]
        bodies_http = [make_report(i, args.processes, now).model_dump_json().encode()
                       for i in range(args.reports)]
        runs = {
            "naive": await measured(redis, partial(bench_naive, redis, reports, conc)),
            "fast": await measured(redis, partial(bench_fast, enqueuer, reports, conc)),
            "validate": await measured(redis, partial(bench_validate, enqueuer, bodies, conc)),
            "http": await measured(redis, partial(bench_http, url, redis, bodies_http, conc)),
        }
        if durable is not None:
            again = [make_report(i, args.processes, now) for i in range(args.reports)]
            runs["waitaof"] = await measured(redis, partial(
                bench_fast, durable, again, args.wait_aof_concurrency))
        await clear_streams(redis)
        ratios.append(runs["naive"][0] / runs["fast"][0])
        print(f"  round {round_no + 1}: " + "   ".join(
            f"{name} {total / wall:>9,.0f} msg/s" for name, (wall, _, _) in runs.items())
            + f"   fast/naive {ratios[-1]:.2f}x")
        for name, run in runs.items():
            if name not in best or run[0] < best[name][0]:
                best[name] = run
    await pool.close()
    await redis.delete(stream.TOKENS_KEY, stream.SHARDS_KEY)
    await redis.aclose()

    def row(label: str, name: str) -> str:
        wall, cpu, server_cpu = best[name]
        return (f"{label:<26}{total / wall:>12,.0f}{cpu / total * 1e6:>12.2f}"
                f"{server_cpu / total * 1e6:>12.2f}")

    print(f"best of {args.rounds}:{'messages/s':>27}{'us CPU/msg':>12}{'Redis us/msg':>13}")
    print(row("naive redis-py pipeline", "naive"))
    print(row("fast path (enqueue.py)", "fast")
          + f"   ratio {statistics.median(ratios):.2f}x vs naive (median of the rounds' "
            f"ratios; CPU per message {best['naive'][1] / best['fast'][1]:.2f}x)")
    print(row("validate + enqueue", "validate") + "   (no HTTP)")
    print(row("full HTTP path", "http") + "   (CPU includes the in-process client)")
    if "waitaof" in best:
        print(row("fast path + WAITAOF", "waitaof")
              + f"   (concurrency {args.wait_aof_concurrency}, group commit)")
    for label, name in (("validate + enqueue", "validate"), ("full HTTP path", "http")):
        reports_s = args.reports / best[name][0]
        print(f"{label}: {reports_s:,.0f} reports/s = {1e6 / reports_s:,.0f} us per report "
              f"of {args.processes} processes")


def cli() -> None:
    tune_gc()  # as `procfleet gateway` does; the same for every path measured
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wait-aof", action="store_true",
                        help="also run the fast path answering only after the AOF fsync")
    parser.add_argument("--wait-aof-concurrency", type=int, default=200,
                        help="reports in flight for --wait-aof (each waits for an fsync)")
    args = parser.parse_args()
    if os.environ.get("REDIS_URL"):
        asyncio.run(main(args, os.environ["REDIS_URL"]))
        return
    from procfleet.embedded import EmbeddedValkey

    data_dir = Path(tempfile.mkdtemp(prefix="procfleet-bench-valkey-"))
    try:
        with EmbeddedValkey(data_dir) as valkey:
            asyncio.run(main(args, valkey.url))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    cli()
