"""What operators use: /metrics, several worker processes, the command line."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from digest_worker.worker import Worker
from ingest_gateway import stream
from procfleet.embedded import free_port
from tests.support.polling import wait_until
from tests.support.processes import descendants, wait_gone
from tests.support.worker import (
    SHARDS,
    expected_counts,
    produce,
    report_messages,
    stream_state,
    table_counts,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).timestamp()
REPO = Path(__file__).resolve().parents[2]


def metric(text: str, name: str) -> float:
    """The value of the sample line ``name`` (with its labels) in an exposition text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_endpoint_counts_rows_duplicates_dead_letters_and_lag(redis, settings):
    messages = report_messages("metered", NOW - 30, processes=10)
    await produce(redis, messages + messages[-3:])
    await redis.xadd(stream.sample_stream(0), {b"v": b"1", b"d": b"nope"})
    port = free_port()
    worker = Worker(settings.with_overrides(burst=False, metrics_port=port))
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _rows(worker, len(messages) + 4))
        await worker.report()  # what the summary interval does
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        # Loopback only by default: /metrics names hosts and backlogs.
        assert worker.metrics._server.server_address[0] == "127.0.0.1"
    finally:
        worker.stop("test")
        await asyncio.wait_for(task, 30)

    p = "procfleet_worker"
    assert metric(text, f'{p}_rows_inserted_total{{table="process_samples"}}') == 10
    assert metric(text, f'{p}_rows_duplicate_total{{table="process_samples"}}') == 3
    assert metric(text, f'{p}_entries_dead_lettered_total{{reason="undecodable"}}') == 1
    assert metric(text, f"{p}_batch_seconds_count") >= 1
    assert f'{p}_batch_seconds_bucket{{le="0.1"}}' in text
    for shard in range(SHARDS):
        assert metric(text, f'{p}_lag_seconds{{shard="{shard}"}}') == 0
        assert metric(text, f'{p}_backlog_entries{{shard="{shard}"}}') == 0


async def _rows(worker: Worker, expected: int) -> bool:
    return worker.summary.rows >= expected


def run_command(settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "REDIS_URL": settings.redis_url,
                   "DATABASE_URL": settings.database_url, "PROCFLEET_SHARDS": str(SHARDS),
                   "PROCFLEET_WORKER_BLOCK_MS": "200", **env}
    return subprocess.run([sys.executable, "-m", "procfleet", *args], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=120)


async def test_concurrency_runs_several_consumers_that_share_the_work(redis, settings):
    messages = [m for r in range(40) for m in report_messages(f"c{r % 8}", NOW - 99 + r, 50)]
    await produce(redis, messages)

    result = await asyncio.to_thread(run_command, settings, "worker", "--concurrency", "2",
                                     "--burst", PROCFLEET_WORKER_BATCH_SIZE="200")

    assert result.returncode == 0, result.stderr
    assert await table_counts(settings.database_url) == expected_counts(messages)
    assert await stream_state(redis) == {"length": 0, "pending": 0}
    consumers = {c["name"] for shard in range(SHARDS)
                 for c in await redis.xinfo_consumers(stream.sample_stream(shard), stream.GROUP)}
    assert len(consumers) == 2
    assert result.stderr.count('msg="worker stopped"') == 2


async def test_worker_command_applies_migrations_and_rejects_bad_settings(fresh_database,
                                                                         settings):
    url = await fresh_database()
    bad = await asyncio.to_thread(run_command, settings, "worker", "--burst",
                                  PROCFLEET_WORKER_BATCH_SIZE="many")
    assert bad.returncode == 2
    assert "PROCFLEET_WORKER_BATCH_SIZE" in bad.stderr and "'many'" in bad.stderr

    ok = await asyncio.to_thread(run_command, settings.with_overrides(database_url=url),
                                 "worker", "--burst")

    assert ok.returncode == 0, ok.stderr
    assert 'msg="migration applied"' in ok.stderr and 'msg="worker started"' in ok.stderr
    assert (await table_counts(url))["process_samples"] == 0


async def test_a_taken_metrics_port_stops_the_worker_with_a_clear_error(settings):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(run_command, settings, "worker", "--burst",
                                         "--metrics-port", str(port))
    assert result.returncode == 1
    assert f"cannot serve /metrics on port {port}" in result.stderr


def test_metrics_listen_on_loopback_unless_told_otherwise():
    from digest_worker.metrics import WorkerMetrics
    from digest_worker.settings import WorkerSettings

    default = WorkerSettings.from_env({}, metrics_port=free_port())
    told = WorkerSettings.from_env({"PROCFLEET_WORKER_METRICS_HOST": "0.0.0.0"},
                                   metrics_port=free_port())
    bound = []
    for settings in (default, told):
        metrics = WorkerMetrics()
        metrics.serve(settings.metrics_port, settings.metrics_host)
        try:
            bound.append(metrics._server.server_address[:2])
        finally:
            metrics.close()
    assert bound == [("127.0.0.1", default.metrics_port), ("0.0.0.0", told.metrics_port)]


async def test_worker_processes_stop_when_their_supervisor_is_killed_with_9(settings):
    env = {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
           "PROCFLEET_SHARDS": str(SHARDS), "PROCFLEET_WORKER_BLOCK_MS": "200"}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "procfleet", "worker", "--concurrency", "2", "--no-migrate"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    family: list[int] = []
    try:
        async def two_workers() -> bool:
            family[:] = descendants(supervisor.pid)
            return sum(b"spawn_main" in _cmdline(pid) for pid in family) == 2
        await wait_until(two_workers, "two worker processes")
    finally:
        supervisor.kill()
        supervisor.wait()
    left = await asyncio.to_thread(wait_gone, family, 60)
    for pid in left:
        os.kill(pid, 9)
    assert left == []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
