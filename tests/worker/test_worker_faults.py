"""Faults: SIGTERM mid-load, kill -9 mid-batch, PostgreSQL restarted under load. Nothing is
lost and nothing lands twice."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from digest_worker.worker import Worker
from migrations.runner import migrate
from tests.support.polling import wait_until
from tests.support.worker import (
    age_pending,
    expected_counts,
    produce,
    report_messages,
    run_burst,
    stream_state,
    table_counts,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

NOW = datetime.now(UTC).timestamp()
REPO = Path(__file__).resolve().parents[2]


def many_reports(reports: int, processes: int = 100) -> list[tuple[str, tuple]]:
    return [m for r in range(reports)
            for m in report_messages(f"load-{r % 20}", NOW - 600 + r, processes=processes)]


def start_worker(settings, log_path: Path, *args: str, **env: str) -> subprocess.Popen:
    """``procfleet worker`` in a child process of this test (ours to kill)."""
    environment = {
        **os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
        "PROCFLEET_SHARDS": str(settings.shards), "PROCFLEET_WORKER_BLOCK_MS": "200",
        "PROCFLEET_WORKER_BATCH_MAX_WAIT_MS": "20", "PROCFLEET_WORKER_RETRY_MAX_DELAY_S": "0.5",
        **env,
    }
    with open(log_path, "ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "procfleet", "worker", *args],
                                cwd=REPO, env=environment, stdout=log_file, stderr=log_file)


async def processes_landed(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM process_samples")
    finally:
        await conn.close()


async def test_sigterm_finishes_and_acknowledges_the_batches_in_hand(redis, settings,
                                                                     tmp_path):
    messages = many_reports(300)
    await produce(redis, messages)
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path, PROCFLEET_WORKER_BATCH_SIZE="200")
    try:
        await wait_until(lambda: processes_landed(settings.database_url), timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        proc.kill()
    log_text = log_path.read_text()
    assert code == 0, log_text
    [stopped] = [line for line in log_text.splitlines() if 'msg="worker stopped"' in line]
    assert "reason=sigterm" in stopped
    state = await stream_state(redis)
    assert state["pending"] == 0  # every batch read was written and acknowledged
    assert state["length"] > 0, "the load was too small to stop in the middle"
    worker = await run_burst(settings)  # the rest, untouched, is still there
    assert await table_counts(settings.database_url) == expected_counts(messages)
    assert worker.summary.duplicates == 0


async def test_kill_9_mid_batch_then_restart_lands_every_row_exactly_once(redis, settings,
                                                                          tmp_path):
    messages = many_reports(400)
    await produce(redis, messages)
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path, PROCFLEET_WORKER_BATCH_SIZE="200",
                        PROCFLEET_WORKER_CLAIM_IDLE_MS="1000")
    try:
        await wait_until(lambda: _landed_at_least(settings.database_url, 2000), timeout_s=60)
        proc.kill()  # SIGKILL: no shutdown hook, a batch is in flight
        await asyncio.to_thread(proc.wait, 10)
    finally:
        proc.kill()
    landed_before = await processes_landed(settings.database_url)
    total = expected_counts(messages)["process_samples"]
    assert landed_before < total, "the worker finished before it was killed"
    assert (await stream_state(redis))["pending"] > 0  # the dead consumer's batch
    assert await age_pending(redis, idle_ms=120_000) > 0  # the dead consumer's entries

    restarted = start_worker(settings, log_path, "--burst", PROCFLEET_WORKER_BATCH_SIZE="400",
                             PROCFLEET_WORKER_CLAIM_IDLE_MS="60000")
    try:
        code = await asyncio.to_thread(restarted.wait, 120)
    finally:
        restarted.kill()
    assert code == 0, log_path.read_text()
    assert await table_counts(settings.database_url) == expected_counts(messages)
    assert await stream_state(redis) == {"length": 0, "pending": 0}
    conn = await asyncpg.connect(settings.database_url)
    try:  # exactly once: one row per key and per sample sent
        distinct = await conn.fetchval(
            "SELECT count(DISTINCT (server_id, pid, start_time, ts)) FROM process_samples")
    finally:
        await conn.close()
    assert distinct == total


async def _landed_at_least(url: str, rows: int) -> bool:
    return await processes_landed(url) >= rows


async def test_postgres_restarted_during_a_load_loses_nothing(redis, settings, own_postgres,
                                                              caplog):
    server = own_postgres()
    await _wait_accepting(server.url)
    await migrate(server.url)
    first, second = many_reports(20, processes=20), many_reports(40, processes=20)[20 * 23:]
    worker = Worker(settings.with_overrides(database_url=server.url, burst=False,
                                            retry_max_delay_s=0.3))
    with caplog.at_level(logging.INFO, logger="digest_worker"):
        task = asyncio.create_task(worker.run())
        await produce(redis, first)
        await wait_until(lambda: _rows(worker, len(first)))
        await asyncio.to_thread(server.stop)
        await produce(redis, second)
        await asyncio.sleep(1.5)  # the worker holds the batch and retries
        assert worker.summary.rows == len(first)
        await asyncio.to_thread(server.start)
        await wait_until(lambda: _rows(worker, len(first) + len(second)), timeout_s=60)
        worker.stop("test")
        await asyncio.wait_for(task, 30)

    assert await table_counts(server.url) == expected_counts(first + second)
    assert await stream_state(redis) == {"length": 0, "pending": 0}
    retries = [r for r in caplog.records if r.getMessage() == "database unavailable, retrying"]
    assert retries and all(r.levelno == logging.WARNING for r in retries)
    assert all(r.kv["next_delay_s"] > 0 and r.kv["attempt"] >= 1 for r in retries)


async def _rows(worker: Worker, expected: int) -> bool:
    return worker.summary.rows >= expected


async def _wait_accepting(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = await asyncpg.connect(url)
            await conn.close()
            return
        except (asyncpg.CannotConnectNowError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
