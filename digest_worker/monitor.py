"""What a worker tells operators besides its batch lines: the run's totals (the ``worker
stopped`` line and the ``summary`` line's rate), the periodic ``summary`` line with the
per-shard gauges, and the loop that runs periodic work. Nothing here changes Redis: following a
new shard count and forgetting departed consumers is the consumer group's job
(``streams.GroupConsumer.follow_topology``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from digest_worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    from digest_worker.streams import GroupConsumer

log = logging.getLogger("digest_worker.worker")


@dataclass
class WorkerSummary:
    """Totals of one run (the ``worker stopped`` line) and the rows since the last ``summary``
    line; owned and updated by the worker."""

    batches: int = 0
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    started_at: float = 0.0
    # Monotonic start of consumption and end of the last batch: rows/s while working.
    consuming_since: float = 0.0
    last_batch_done: float = 0.0
    window_rows: int = 0
    window_started_s: float = field(default_factory=time.monotonic)

    def add_batch(self, rows: int, inserted: int, duplicates: int, dead_lettered: int,
                  done_s: float) -> None:
        self.batches += 1
        self.rows += rows
        self.inserted += inserted
        self.duplicates += duplicates
        self.dead_lettered += dead_lettered
        self.last_batch_done = done_s
        self.window_rows += rows

    def take_window_rate(self, now_s: float) -> float:
        """Rows per second since the previous call (or the start); starts a new window."""
        rate = self.window_rows / max(now_s - self.window_started_s, 1e-9)
        self.window_rows, self.window_started_s = 0, now_s
        return rate

    def as_kv(self) -> dict[str, Any]:
        return {"batches": self.batches, "rows": self.rows, "inserted": self.inserted,
                "duplicates": self.duplicates, "dead_lettered": self.dead_lettered,
                "uptime_s": round(time.monotonic() - self.started_at, 3)}


async def every(interval_s: float, func: Callable[[], Awaitable[Any]]) -> None:
    """Run ``func`` every ``interval_s`` until cancelled; a failure is logged, not raised."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await func()
        except Exception as exc:  # periodic work must not kill the worker
            log.warning(f"{func.__name__} failed", extra={"kv": {
                "error": f"{type(exc).__name__}: {exc}"[:300]}})


async def log_summary(consumer: GroupConsumer, metrics: WorkerMetrics,
                      summary: WorkerSummary) -> dict[int, dict[str, float]]:
    """Refresh the per-shard gauges, log ``summary rows_per_s=… lag_s=… pending=… backlog=…
    batches=…``; return the shard stats."""
    stats = await consumer.stats()
    for shard, values in stats.items():
        metrics.lag_seconds.labels(str(shard)).set(values["lag_s"])
        metrics.backlog.labels(str(shard)).set(values["backlog"])
        metrics.pending.labels(str(shard)).set(values["pending"])
    log.info("summary", extra={"kv": {
        "rows_per_s": round(summary.take_window_rate(time.monotonic()), 1),
        "lag_s": round(max((v["lag_s"] for v in stats.values()), default=0.0), 3),
        "pending": int(sum(v["pending"] for v in stats.values())),
        "backlog": int(sum(v["backlog"] for v in stats.values())),
        "batches": summary.batches}})
    return stats
