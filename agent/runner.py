"""The agent loop: collect, deliver, spool, on a fixed schedule.

Each tick builds one report, serializes and gzips it once (the same bytes and ``report_id`` on
every retry and replay), replays the spool oldest-first while the gateway takes reports, then
sends the new one. A report the gateway cannot take now goes to the spool; one it rejects
(a 4xx that retrying cannot fix) is dropped and counted. Ticks fall on ``start + k * interval``
(no drift), after a random per-host splay so a fleet does not report in step. SIGTERM/SIGINT
let the current send finish (or spool it after a short grace) and end with a summary line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from prometheus_client import Counter

from agent.config import AgentSettings
from agent.enroll import EnrollingSender
from agent.errors import DeliveryError, ReportRejected
from agent.rows import Report
from agent.sender import Sender, gzip_body
from agent.spool import REPORTS_DROPPED, Spool, SpoolError

log = logging.getLogger(__name__)
T = TypeVar("T")

REPLAY_SHARE = 0.5  # share of an interval a tick may spend replaying the spool
MAX_RETRY_BUDGET_S = 30.0

REPORTS_SENT = Counter(
    "procfleet_agent_reports_sent_total", "Reports the gateway took", ["path"]  # live | replay
)
REPORTS_SPOOLED = Counter("procfleet_agent_reports_spooled_total", "Reports written to the spool")
REPORTS_REJECTED = Counter(
    "procfleet_agent_reports_rejected_total", "Reports the gateway refused with a 4xx (dropped)"
)
TICK_FAILURES = Counter("procfleet_agent_tick_failures_total", "Ticks that failed unexpectedly")


class _Interrupted(DeliveryError):
    """A send cut short by shutdown; the report is spooled, nothing is lost."""


@dataclass
class AgentStats:
    """What the agent did since it started (the shutdown summary line)."""

    ticks: int = 0
    sent: int = 0
    replayed: int = 0
    spooled: int = 0
    rejected: int = 0
    dropped: int = 0
    failed_ticks: int = 0
    skipped_ticks: int = 0


class Agent:
    """One agent: ``build`` makes a report, ``sender`` delivers it, ``spool`` keeps what it
    could not deliver. ``clock`` / ``sleep`` / ``rng`` are injectable for tests."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        build: Callable[[], Awaitable[Report]],
        sender: Sender | EnrollingSender,
        spool: Spool,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        stop_grace_s: float | None = None,
    ) -> None:
        self.settings = settings
        self._build = build
        self._sender = sender
        self._spool = spool
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._grace_s = min(settings.timeout_s, 5.0) if stop_grace_s is None else stop_grace_s
        self._stop = asyncio.Event()
        self.stats = AgentStats()

    def request_stop(self) -> None:
        """Ask the loop to finish the current tick and return (signal handlers call this)."""
        if not self._stop.is_set():
            log.info("agent stopping", extra={"kv": {"spool_reports": len(self._spool)}})
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- schedule -----------------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> AgentStats:
        """Tick until stopped (or once). Returns the stats, also logged as the summary line."""
        interval = self.settings.interval_s
        if not once:
            splay = self._rng.uniform(0.0, self.settings.effective_splay_s)
            log.info("first tick after splay", extra={"kv": {"splay_s": round(splay, 3)}})
            await self._wait_until(self._clock() + splay)
        start = self._clock()
        k = 0
        while not self.stopping:
            await self.tick()
            if once:
                break
            k += 1
            elapsed = self._clock() - start
            if elapsed >= k * interval:  # the tick overran: skip the slots it ate, keep phase
                behind = math.floor(elapsed / interval) + 1
                self.stats.skipped_ticks += behind - k
                log.warning(
                    "tick overran the interval, skipping",
                    extra={"kv": {"skipped": behind - k, "interval_s": interval}},
                )
                k = behind
            await self._wait_until(start + k * interval)
        log.info("agent stopped", extra={"kv": {**asdict(self.stats),
                                                "spool_reports": len(self._spool)}})
        return self.stats

    async def _wait_until(self, deadline: float) -> None:
        delay = deadline - self._clock()
        if delay <= 0 or self.stopping:
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleeper, stopper):
            task.cancel()

    # --- one tick ------------------------------------------------------------------------------

    async def tick(self) -> str:
        """Collect and deliver one report. Returns its outcome: sent, duplicate, spooled,
        rejected, dropped or failed. Never raises (a bad tick must not end the agent)."""
        started = self._clock()
        self.stats.ticks += 1
        try:
            report = await self._build()
            body = gzip_body(report.model_dump_json().encode())
        except Exception:
            self.stats.failed_ticks += 1
            TICK_FAILURES.inc()
            log.exception("tick failed: no report built")
            return "failed"
        collect_ms = (self._clock() - started) * 1000
        replayed, gateway_up = 0, True
        if len(self._spool) and not self.stopping:
            deadline = started + REPLAY_SHARE * self.settings.interval_s
            replayed, gateway_up = await self._replay(deadline)
        outcome = await self._deliver(report.report_id, body, try_send=gateway_up)
        log.info(
            "tick",
            extra={"kv": {
                "report_id": report.report_id,
                "outcome": outcome,
                "processes": len(report.processes),
                "groups": len(report.process_groups),
                "bytes": len(body),
                "replayed": replayed,
                "spool_reports": len(self._spool),
                "collect_ms": round(collect_ms, 1),
                "tick_ms": round((self._clock() - started) * 1000, 1),
            }},
        )
        return outcome

    async def _replay(self, deadline: float) -> tuple[int, bool]:
        """Send spooled reports oldest-first, one attempt each, until the spool is empty, the
        gateway refuses, shutdown, or ``deadline``. Returns (replayed, gateway_took_all_tried)."""
        replayed = 0
        for entry in self._spool:
            if self.stopping or self._clock() >= deadline:
                break
            body = self._spool.read(entry)
            if body is None:
                continue
            try:
                await self._guarded(
                    self._sender.send_gzip(body, report_id=entry.report_id, max_attempts=1)
                )
            except ReportRejected:
                self._spool.remove(entry)
                self._count_rejected()
                continue
            except DeliveryError as exc:
                log.info("gateway not taking reports yet, spool kept",
                         extra={"kv": {"spool_reports": len(self._spool), "error": str(exc)}})
                return replayed, False
            self._spool.remove(entry)
            replayed += 1
            self.stats.replayed += 1
            REPORTS_SENT.labels("replay").inc()
        return replayed, True

    async def _deliver(self, report_id: str, body: bytes, *, try_send: bool) -> str:
        if try_send:
            try:
                result = await self._guarded(self._sender.send_gzip(body, report_id=report_id))
            except ReportRejected:
                self._count_rejected()
                return "rejected"
            except DeliveryError as exc:
                log.warning("report not delivered, spooling",
                            extra={"kv": {"report_id": report_id, "error": str(exc)}})
            except Exception:  # a bug in delivery must not cost the report
                log.exception("unexpected error while sending, spooling",
                              extra={"kv": {"report_id": report_id}})
            else:
                self.stats.sent += 1
                REPORTS_SENT.labels("live").inc()
                return "duplicate" if result.duplicate else "sent"
        return self._to_spool(report_id, body)

    def _to_spool(self, report_id: str, body: bytes) -> str:
        try:
            entry = self._spool.put(report_id, body)
        except SpoolError as exc:
            self.stats.dropped += 1
            REPORTS_DROPPED.labels("spool_error").inc()
            log.error("report lost: spool not writable",
                      extra={"kv": {"report_id": report_id, "error": str(exc)}})
            return "dropped"
        if entry is None:
            self.stats.dropped += 1
            return "dropped"
        self.stats.spooled += 1
        REPORTS_SPOOLED.inc()
        return "spooled"

    def _count_rejected(self) -> None:
        self.stats.rejected += 1
        REPORTS_REJECTED.inc()

    async def _guarded(self, coro: Awaitable[T]) -> T:
        """Await a send; on shutdown give it ``stop_grace_s`` more, then cut it short
        (``_Interrupted``: the caller spools, the gateway dedupes if it did arrive)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self._grace_s)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise _Interrupted("send cut short by shutdown")
            return task.result()
        finally:
            stopper.cancel()
