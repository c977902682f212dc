"""The digest worker: stream entries in, table rows out, exactly once.

One pipeline per process, three stages that overlap on the event loop::

    read  (own pending first, stalled entries of dead consumers, then new ones) + decode
      → write  (BatchWriter: one transaction, one round trip per table) → COMMIT
      → settle (XADD dead letters + XACK + trim what is acknowledged, in one MULTI)
      → one ``batch`` log line

While batch N is written, batch N+1 is read and decoded and batch N-1 is settled. Nothing is
acknowledged before its transaction committed; a crash anywhere re-delivers entries whose rows
the unique keys then absorb.

- PostgreSQL or Redis unreachable: retry with backoff (digest_worker/retrying.py), the batch
  kept in hand and nothing acknowledged; during a long outage the held entries are re-claimed
  by this consumer so no one else takes them.
- A message that cannot be decoded, cannot be inserted, or was delivered more than
  ``max_deliveries`` times goes to the dead-letter stream with its reason (an error line
  each); the rest of its batch lands.
- Isolating the poison of one batch stops after ``batch_timeout_s``: what is resolved is
  committed, the rest handed back (left unacknowledged; it is claimed again later and
  ``max_deliveries`` bounds how often), so no host's data can stall the others'.
- ``stop()`` (SIGTERM): finish and acknowledge the batches in hand, then return; a
  ``worker stopped`` line sums up the run. A batch still being written is given
  ``shutdown_timeout_s`` (poison isolation hands back what it has not resolved at once), then
  abandoned: rolled back, unacknowledged, delivered again later. ``burst``: return once the
  streams are drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from redis.exceptions import RedisError

from agent.errors import ProcfleetError
from digest_worker import compaction, partitions, redis_client, rollup, streams
from digest_worker.batch import INSERT_FAILED, Batch, decode_batch
from digest_worker.cluster_streams import ClusterGroupConsumer
from digest_worker.metrics import WorkerMetrics
from digest_worker.monitor import WorkerSummary, every, log_summary
from digest_worker.retention import Retention, partition_upkeep
from digest_worker.retrying import retry_until_stopped
from digest_worker.settings import WorkerSettings
from digest_worker.streams import Entry, GroupConsumer
from digest_worker.writer import BatchWriter, WriteResult
from ingest_gateway import stream

log = logging.getLogger(__name__)

T = TypeVar("T")
# A batch in hand is ~5 container objects per entry (hiredis' lists, the Entry, the decoded
# row), so the cyclic collector runs dozens of times per batch and its older-generation passes
# walk every batch in hand. Nothing on this path makes reference cycles (only error paths do,
# through exceptions' tracebacks), so a worker process turns the automatic collector off and
# collects every GC_INTERVAL_S instead. Worker CPU per row on a pre-filled stream
# (docs/BENCHMARKS.md "Digest workers"): 11.9 us by default, 10.0 us with a gen-0 threshold
# of 100,000, 8.2 us with this.
GC_INTERVAL_S = 30.0
# How long a burst worker waits for more entries before it calls the streams drained.
BURST_BLOCK_MS = 100
# After SIGTERM: how long closing the pool may take before its connections are terminated.
POOL_CLOSE_TIMEOUT_S = 5.0


class WriteAbandoned(ProcfleetError):
    """A batch's write outlived ``shutdown_timeout_s`` after ``stop()`` and was cancelled."""


def tune_gc() -> None:
    """For a worker process (not a test run): freeze what start-up allocated, so no
    collection walks it again, and stop automatic collections; ``Worker.run`` then collects
    every ``GC_INTERVAL_S``."""
    gc.freeze()
    gc.disable()


async def collect_garbage() -> None:
    """One full collection (what the automatic collector would have found: error paths'
    reference cycles)."""
    gc.collect()


class Worker:
    """One digest worker process's loop; ``run`` connects to the URLs of ``settings``."""

    def __init__(self, settings: WorkerSettings, *, metrics: WorkerMetrics | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.writer = BatchWriter(settings.insert_method)
        self.summary = WorkerSummary()
        self.clock = clock
        self.consumer: GroupConsumer | None = None
        self.pool: asyncpg.Pool | None = None
        self._stopping = asyncio.Event()
        self._stop_reason = "burst" if settings.burst else "stopped"
        self._pending_first = True
        self._in_hand: list[Batch] = []  # read, not yet acknowledged
        self._next_claim_s = 0.0
        self._active_shards = settings.shards

    def stop(self, reason: str = "signal") -> None:
        """Finish the batches in hand, acknowledge them, and return from ``run``."""
        self._stop_reason = reason
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> WorkerSummary:
        """Consume until ``stop()`` (or, in burst mode, until the streams are drained)."""
        self.summary.started_at = time.monotonic()
        settings = self.settings
        commands = reader = None
        background: list[asyncio.Task] = []
        try:
            commands, reader = await self._retry(
                "redis", redis_client.open_clients, settings.redis_url,
                settings.socket_timeout_s)
            shards = await self._retry("redis", redis_client.shard_count, commands, settings.shards)
            if reader is None:  # a cluster: one command per shard, reads poll
                self.consumer = ClusterGroupConsumer(commands, settings.consumer_name, shards,
                                                     settings.dead_letter_maxlen)
            else:
                self.consumer = GroupConsumer(commands, reader, settings.consumer_name, shards,
                                              settings.dead_letter_maxlen)
            self._active_shards = shards
            await self._retry("redis", self.consumer.ensure_groups)
            self.pool = await self._retry("database", self._create_pool)
            await self._retry("database", self.upkeep)
            if settings.metrics_port is not None:
                self.metrics.serve(settings.metrics_port, settings.metrics_host)
            effective = settings.describe()
            del effective["consumer_name"]
            # shards: the count in use (the gateway's), not the fallback setting
            log.info("worker started", extra={"kv": {
                "consumer": settings.consumer_name, **effective, "shards": shards}})
            background = [
                asyncio.create_task(every(settings.summary_interval_s, self.report)),
                asyncio.create_task(every(settings.upkeep_interval_s, self.upkeep)),
                # Query-side rollups (digest_worker/rollup.py; one worker at a time does it).
                asyncio.create_task(every(rollup.INTERVAL_S, rollup.RollupJob(
                    self.pool, retention_days=settings.retention_days,
                    minute_retention_days=settings.rollup_minute_retention_days,
                    hour_retention_days=settings.rollup_hour_retention_days,
                    partitions_ahead_days=settings.partitions_ahead_days).refresh_rollups)),
                # Storage upkeep: compact closed hours past the hot window (an hour at a time
                # under its own lock: several workers doing it at once is harmless), then,
                # every upkeep interval, the retention of every tier.
                asyncio.create_task(every(settings.compact_interval_s, compaction.CompactionJob(
                    self.pool, older_than=timedelta(hours=settings.hot_window_h),
                    retention=Retention.from_settings(settings),
                    ahead_days=settings.partitions_ahead_days,
                    retention_interval_s=settings.upkeep_interval_s).run)),
            ]
            if not gc.isenabled():  # tune_gc() turned automatic collections off
                background.append(asyncio.create_task(every(GC_INTERVAL_S, collect_garbage)))
            await self._consume()
        except Exception:
            if not self.stopping:  # stopped while waiting for Redis / PostgreSQL: not an error
                raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.metrics.close()
            if self.pool is not None:
                try:
                    await asyncio.wait_for(self.pool.close(), POOL_CLOSE_TIMEOUT_S)
                except TimeoutError:  # a connection stuck in a query: do not wait on it
                    self.pool.terminate()
            if reader is not None:
                await reader.aclose()
            if commands is not None:
                await commands.aclose()
            log.info("worker stopped",
                     extra={"kv": {"reason": self._stop_reason, **self.summary.as_kv()}})
        return self.summary

    async def _create_pool(self) -> asyncpg.Pool:
        # One connection each for the writer, partition upkeep, the rollup job and the
        # compaction job (which holds its connection for a whole run), so that the periodic
        # jobs never make a batch wait for a connection.
        return await asyncpg.create_pool(
            self.settings.database_url, min_size=1, max_size=4, init=self.writer.prepare,
            command_timeout=60, timeout=self.settings.socket_timeout_s,
        )

    # -- the pipeline ----------------------------------------------------------------------

    async def _consume(self) -> None:
        self.summary.consuming_since = time.monotonic()
        fetch: asyncio.Task | None = asyncio.create_task(self._collect())
        settling: asyncio.Task | None = None
        try:
            while fetch is not None:
                try:
                    batch = await fetch
                except Exception:
                    if self.stopping:  # Redis down at shutdown: nothing in hand
                        return
                    raise
                fetch = None
                if not self.stopping and (batch or not self.settings.burst):
                    fetch = asyncio.create_task(self._collect())
                if not batch:
                    continue
                started_s = time.monotonic()
                try:
                    result = await self._write_bounded(batch)
                except Exception as exc:
                    if not self.stopping:
                        raise
                    log.warning("batch not written at shutdown: its entries stay pending "
                                "and another consumer will claim them", extra={"kv": {
                                    "rows": len(batch),
                                    "error": f"{type(exc).__name__}: {exc}"[:300]}})
                    return
                if settling is not None:
                    await settling
                settling = asyncio.create_task(self._settle(batch, result, started_s))
        finally:
            for task in (fetch, settling):
                if task is not None:
                    await asyncio.gather(task, return_exceptions=True)

    async def _collect(self) -> Batch:
        """The next batch, decoded: up to ``batch_size`` entries, waiting at most
        ``batch_max_wait_ms`` once the first is in (``block_ms`` for the first)."""
        entries = await self._retry("redis", self._read_entries)
        batch = decode_batch(entries, self.settings.max_deliveries)
        if batch:
            self._in_hand.append(batch)
        return batch

    async def _read_entries(self) -> list[Entry]:
        if self.stopping:
            return []
        try:
            return await self._read_batch()
        except Exception:
            # Entries may have been delivered to us and lost on the way: re-read our own
            # pending entries first next time.
            self._pending_first = True
            raise

    async def _read_batch(self) -> list[Entry]:
        settings, consumer = self.settings, self.consumer
        assert consumer is not None
        entries: list[Entry] = []
        if self._pending_first:
            entries += await consumer.read_own_pending(settings.batch_size)
            self._pending_first = False
        if time.monotonic() >= self._next_claim_s:
            in_hand = frozenset((e.shard, e.entry_id) for b in self._in_hand for e in b.entries)
            claimed, more = await consumer.claim_stalled(
                settings.claim_idle_ms, settings.batch_size, in_hand)
            entries += claimed
            # An incomplete scan may have left stalled entries behind: claim again next batch.
            self._next_claim_s = 0.0 if more else (
                time.monotonic() + min(settings.claim_idle_ms / 2000, 30.0))
        deadline_s = None
        while len(entries) < settings.batch_size and not self.stopping:
            if deadline_s is None:
                block_ms = BURST_BLOCK_MS if settings.burst else settings.block_ms
            else:
                block_ms = int((deadline_s - time.monotonic()) * 1000)
                if block_ms <= 0:
                    break
            # COUNT applies per stream: share what is missing between the shards that had data.
            missing = settings.batch_size - len(entries)
            count = max(1, -(-missing // max(1, self._active_shards)))
            try:
                got = await consumer.read(count, block_ms)
            except RedisError as exc:
                if not streams.is_missing_group(exc):
                    raise
                await self._recreate_groups()
                continue
            if not got:
                break
            self._active_shards = len({entry.shard for entry in got})
            entries += got
            if deadline_s is None:
                deadline_s = time.monotonic() + settings.batch_max_wait_ms / 1000
        return entries

    async def _recreate_groups(self) -> None:
        assert self.consumer is not None
        created = await self.consumer.ensure_groups()
        log.error("consumer group missing (Redis lost its data?), recreated it; entries "
                  "still in the stream will be delivered again",
                  extra={"kv": {"group": stream.GROUP, "shards": created}})

    async def _write_bounded(self, batch: Batch) -> WriteResult:
        """``_write``, given at most ``shutdown_timeout_s`` once ``stop()`` is called; then
        cancelled (asyncpg cancels the query, the transaction rolls back) and
        ``WriteAbandoned`` raised: nothing of the batch is acknowledged."""
        write = asyncio.ensure_future(self._write(batch))
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({write, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not write.done():
                await asyncio.wait({write}, timeout=self.settings.shutdown_timeout_s)
            if not write.done():
                write.cancel()
                await asyncio.wait({write}, timeout=POOL_CLOSE_TIMEOUT_S)
                raise WriteAbandoned(f"still writing {self.settings.shutdown_timeout_s:g} s "
                                     f"after stop: cancelled")
            return write.result()
        finally:
            stopped.cancel()

    async def _write(self, batch: Batch) -> WriteResult:
        if not batch.messages:
            return WriteResult()
        consumer = self.consumer
        assert consumer is not None
        deadline_s = time.monotonic() + self.settings.batch_timeout_s

        async def keep_claimed() -> None:
            # A long outage: keep our entries from being claimed (and counted) by others.
            with contextlib.suppress(RedisError, OSError):  # Redis down too: next attempt
                await consumer.keep_claimed(batch.entries)

        result = await self._retry("database", self._commit, batch.messages, deadline_s,
                                   while_waiting=keep_claimed)
        for index, reason in result.poison:
            batch.dead.append((batch.sources[index], INSERT_FAILED, f"cannot insert: {reason}"))
        batch.handed_back = [batch.sources[index] for index in result.handed_back]
        if batch.handed_back:
            log.warning("poison isolation stopped (batch_timeout_s or stop): entries handed "
                        "back, to be delivered again", extra={"kv": {
                            "handed_back": len(batch.handed_back), "rows": len(batch),
                            "dead_lettered": len(result.poison),
                            "batch_timeout_s": self.settings.batch_timeout_s,
                            "stopping": self.stopping}})
        return result

    async def _commit(self, messages: list, deadline_s: float) -> WriteResult:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            return await self.writer.commit(conn, messages, deadline_s=deadline_s,
                                            stopping=self._stopping.is_set)

    async def _settle(self, batch: Batch, result: WriteResult, started_s: float) -> None:
        """Dead-letter, acknowledge and delete the entries of a committed batch, log it."""
        try:
            await self._settle_batch(batch, result, started_s)
        finally:
            self._in_hand.remove(batch)

    async def _settle_batch(self, batch: Batch, result: WriteResult, started_s: float) -> None:
        assert self.consumer is not None
        insert_ms = (time.monotonic() - started_s) * 1000
        for entry, label, reason in batch.dead:
            log.error("entry dead-lettered", extra={"kv": {
                "shard": entry.shard, "id": entry.entry_id.decode(), "reason": reason,
                "deliveries": entry.deliveries,
                "dead_letter_stream": stream.dead_letter_stream(entry.shard)}})
            self.metrics.dead_lettered.labels(label).inc()
        try:
            backlog = await self._retry("redis", self.consumer.settle, batch.entries_to_ack(),
                                        [(entry, reason) for entry, _, reason in batch.dead])
        except Exception as exc:  # only when stopping: rows are committed, entries redelivered
            log.warning("batch committed but not acknowledged at shutdown: it will be "
                        "delivered again and absorbed as duplicates", extra={"kv": {
                            "rows": len(batch), "error": f"{type(exc).__name__}: {exc}"[:300]}})
            return
        done_s = time.monotonic()
        self.summary.add_batch(len(batch), result.inserted_total, result.duplicates_total,
                               len(batch.dead), done_s)
        self.metrics.observe_batch(len(batch), result.inserted, result.duplicates,
                                   done_s - started_s)
        log.info("batch", extra={"kv": {
            "rows": len(batch), "inserted": result.inserted_total,
            "duplicates": result.duplicates_total, "dead_lettered": len(batch.dead),
            "handed_back": len(batch.handed_back),
            "insert_ms": round(insert_ms, 1), "backlog": backlog}})

    async def _retry(self, target: str, func: Callable[..., Awaitable[T]], *args: Any,
                     while_waiting: Callable[[], Awaitable[None]] | None = None) -> T:
        return await retry_until_stopped(
            target, func, *args, stopping=self._stopping,
            max_delay_s=self.settings.retry_max_delay_s,
            on_retry=self.metrics.retries.labels(target).inc, while_waiting=while_waiting)

    # -- periodic work ---------------------------------------------------------------------

    async def upkeep(self) -> partitions.UpkeepReport:
        """Create partitions ahead, rescue the default partition, drop each tier's expired
        days (the identities expire in the storage upkeep, after the compaction)."""
        assert self.pool is not None
        settings = self.settings
        async with self.pool.acquire() as conn:
            return await partition_upkeep(conn, self.clock().date(),
                                          Retention.from_settings(settings),
                                          settings.partitions_ahead_days)

    async def report(self) -> dict[int, dict[str, float]]:
        """Follow the group's topology, then log the ``summary`` line and refresh the
        per-shard gauges."""
        assert self.consumer is not None
        await self.consumer.follow_topology(self.settings.shards, self.settings.claim_idle_ms)
        return await log_summary(self.consumer, self.metrics, self.summary)
