"""What a worker tells operators besides its batch lines: the run's totals (the ``worker
stopped`` line), the metrics of each batch, the periodic ``summary`` line and the per-shard
gauges, and the loop that runs periodic work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from digest_worker import redis_client

if TYPE_CHECKING:
    from digest_worker.batch import Batch
    from digest_worker.worker import Worker
    from digest_worker.writer import WriteResult

log = logging.getLogger("digest_worker.worker")

# A consumer with nothing pending, unseen for this long, belonged to a worker that is gone.
FORGET_CONSUMER_AFTER_MS = 3_600_000


@dataclass
class WorkerSummary:
    """Totals of one run, logged in the ``worker stopped`` line."""

    batches: int = 0
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    started_at: float = 0.0
    # Monotonic start of consumption and end of the last batch: rows/s while working.
    consuming_since: float = 0.0
    last_batch_done: float = 0.0

    def as_kv(self) -> dict[str, Any]:
        return {"batches": self.batches, "rows": self.rows, "inserted": self.inserted,
                "duplicates": self.duplicates, "dead_lettered": self.dead_lettered,
                "uptime_s": round(time.monotonic() - self.started_at, 3)}


def account_batch(worker: Worker, batch: Batch, result: WriteResult, started_s: float) -> None:
    """Add a settled batch to the run's totals, the summary window and the metrics."""
    s, m = worker.summary, worker.metrics
    s.batches += 1
    s.rows += len(batch)
    s.inserted += result.inserted_total
    s.duplicates += result.duplicates_total
    s.dead_lettered += len(batch.dead)
    s.last_batch_done = time.monotonic()
    worker.window_rows += len(batch)
    for table, n in result.inserted.items():
        m.rows_inserted.labels(table).inc(n)
    for table, n in result.duplicates.items():
        if n:
            m.rows_duplicate.labels(table).inc(n)
    m.batches.inc()
    m.batch_rows.observe(len(batch))
    m.batch_seconds.observe(s.last_batch_done - started_s)


async def every(interval_s: float, func: Callable[[], Awaitable[Any]]) -> None:
    """Run ``func`` every ``interval_s`` until cancelled; a failure is logged, not raised."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await func()
        except Exception as exc:  # periodic work must not kill the worker
            log.warning(f"{func.__name__} failed", extra={"kv": {
                "error": f"{type(exc).__name__}: {exc}"[:300]}})


async def log_summary(worker: Worker) -> dict[int, dict[str, float]]:
    """Follow a change of the shard count, forget consumers gone for good, refresh the gauges,
    log ``summary rows_per_s=… lag_s=… pending=… backlog=… batches=…``; return the shard
    stats."""
    consumer, metrics = worker.consumer, worker.metrics
    assert consumer is not None
    shards = await redis_client.shard_count(consumer.commands, worker.settings.shards)
    if shards != consumer.shards:
        log.info("shard count changed", extra={"kv": {
            "shards": shards, "previous": consumer.shards}})
        consumer.set_shards(shards)
        await consumer.ensure_groups()
    gone = await consumer.delete_idle_consumers(
        max(FORGET_CONSUMER_AFTER_MS, 10 * worker.settings.claim_idle_ms))
    if gone:
        log.info("removed consumers gone for good", extra={"kv": {"consumers": gone}})
    stats = await consumer.stats()
    for shard, values in stats.items():
        metrics.lag_seconds.labels(str(shard)).set(values["lag_s"])
        metrics.backlog.labels(str(shard)).set(values["backlog"])
        metrics.pending.labels(str(shard)).set(values["pending"])
    now_s = time.monotonic()
    rate = worker.window_rows / max(now_s - worker.window_started_s, 1e-9)
    worker.window_rows, worker.window_started_s = 0, now_s
    log.info("summary", extra={"kv": {
        "rows_per_s": round(rate, 1),
        "lag_s": round(max((v["lag_s"] for v in stats.values()), default=0.0), 3),
        "pending": int(sum(v["pending"] for v in stats.values())),
        "backlog": int(sum(v["backlog"] for v in stats.values())),
        "batches": worker.summary.batches}})
    return stats
