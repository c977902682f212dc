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
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import httpx
from prometheus_client import Counter

from agent.config import AgentSettings
from agent.enroll import EnrollingSender, HostTokenFile
from agent.errors import ConfigError, DeliveryError, ReportRejected
from agent.report import build_report, host_of, make_scrubber
from agent.rows import Host, Report
from agent.sender import REPORTS_PATH, Sender, build_client, gzip_body
from agent.spool import REPORTS_DROPPED, Spool, SpoolError, check_writable

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


# --- entry points for `procfleet agent` ---------------------------------------------------------


def check_settings(settings: AgentSettings) -> Host:
    """What ``--check`` verifies beyond parsing: delivery keys set, scrub words usable, spool
    dir writable, host identity found. Returns the host the reports would come from."""
    settings.require_delivery()
    make_scrubber(settings)
    assert settings.spool_dir is not None  # require_delivery checked it
    check_writable(settings.spool_dir)
    return host_of(settings)


def _client(settings: AgentSettings) -> httpx.AsyncClient:
    return build_client(
        timeout_s=settings.timeout_s,
        ca_file=settings.ca_file,
        urls=(settings.gateway_url, settings.process_exporter_url),
    )


async def dry_run(settings: AgentSettings) -> Report:
    """Build one report without sending (for ``--dry-run``)."""
    async with _client(settings) as http:
        return await build_report(settings, http=http)


def _install_signal_handlers(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, agent.request_stop)
        except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(agent.request_stop))


async def run_agent(settings: AgentSettings, *, once: bool = False) -> AgentStats:
    """Run the agent with real collectors, HTTP client and spool until SIGTERM (or once)."""
    settings.require_delivery()
    assert settings.gateway_url and settings.spool_dir  # checked just above
    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.metrics_port, addr=settings.metrics_addr)
        except OSError as exc:
            raise ConfigError("metrics_port", settings.metrics_port, str(exc)) from exc
    host = host_of(settings)
    scrubber = make_scrubber(settings)
    log.info("agent starting", extra={"kv": {**settings.describe(), "server_id": host.server_id,
                                             "spool_reports": len(spool)}})
    if settings.insecure_http:  # only reachable with allow_insecure_http (require_delivery)
        log.warning("sending the token and reports over plain http:// to another machine: "
                    "anyone on the way can read and reuse the token", extra={"kv": {
                        "gateway_url": settings.gateway_url, "allow_insecure_http": True}})
    async with _client(settings) as http:
        gateway_url = settings.gateway_url

        def make_sender(path: str, token: str) -> Sender:
            return Sender(http, gateway_url, token, path=path,
                          retry_budget_s=min(MAX_RETRY_BUDGET_S, settings.interval_s / 2))

        sender: Sender | EnrollingSender
        if settings.enroll_token is not None:
            # Enrollment wins over a shared ingest token: this host writes only its own data.
            sender = EnrollingSender(make_sender, settings.enroll_token.get_secret_value(),
                                     server_id=host.server_id, hostname=host.hostname,
                                     token_file=HostTokenFile(settings.spool_dir))
        else:
            assert settings.token is not None  # require_delivery: one of the two is set
            sender = make_sender(REPORTS_PATH, settings.token.get_secret_value())

        def build() -> Awaitable[Report]:
            return build_report(settings, http=http, scrubber=scrubber, host=host)

        agent = Agent(settings, build=build, sender=sender, spool=spool)
        _install_signal_handlers(agent)
        return await agent.run(once=once)

