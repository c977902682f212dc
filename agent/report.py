"""Assemble one ``Report`` from the host, process_exporter and the process table.

A collector that fails costs its part of the report, never the report: an unreachable
process_exporter is one warning line and the report still goes out with the ps/tasklist data
(and the other way round). Command lines are scrubbed by the process-table collector before
they reach the report.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import httpx

from agent import __version__
from agent.collectors.process_exporter import scrape_groups
from agent.collectors.process_table import collect_process_table
from agent.config import AgentSettings
from agent.errors import CollectError
from agent.hostinfo import collect_host
from agent.rows import Host, ProcessGroup, ProcessSample, Report, Snapshot
from agent.scrub import Scrubber

log = logging.getLogger(__name__)


def new_report_id(*, now_ms: int | None = None) -> str:
    """A ULID-like id: 12 hex digits of epoch milliseconds, then 80 random bits. Sorts by
    creation time, which makes spool files and gateway logs easy to follow."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{stamp:012x}{secrets.token_hex(10)}"


def cap_processes(
    processes: list[ProcessSample], max_processes: int, pinned_names: Iterable[str] = ()
) -> list[ProcessSample]:
    """Keep the top ``max_processes`` by CPU time, the top ``max_processes`` by RSS and every
    process whose name is pinned (case-insensitive); 0 keeps all. Original order is kept."""
    if max_processes <= 0 or len(processes) <= max_processes:
        return processes
    pinned = {name.lower() for name in pinned_names}
    by_cpu = sorted(
        range(len(processes)), key=lambda i: processes[i].cpu_seconds_total or 0.0, reverse=True
    )
    by_rss = sorted(
        range(len(processes)), key=lambda i: processes[i].rss_bytes or 0, reverse=True
    )
    keep = set(by_cpu[:max_processes]) | set(by_rss[:max_processes])
    keep.update(i for i, p in enumerate(processes) if p.name.lower() in pinned)
    return [p for i, p in enumerate(processes) if i in keep]


def host_of(settings: AgentSettings) -> Host:
    """This machine's ``Host``. An OS machine id is hashed per ``server_id_source``; a host
    without one gets a generated id, kept in ``<spool_dir>/server-id`` so it survives restarts
    (the spool ignores that file)."""
    state_file = settings.spool_dir / "server-id" if settings.spool_dir else None
    return collect_host(
        server_id=settings.server_id,
        agent_version=__version__,
        state_file=state_file,
        server_id_source=settings.server_id_source,
    )


def make_scrubber(settings: AgentSettings) -> Scrubber:
    """The command-line scrubber: the default words plus ``scrub_words``. Raises ConfigError
    for a word that is not a plain identifier."""
    return Scrubber(words=settings.scrub_words)


async def _groups(
    settings: AgentSettings, http: httpx.AsyncClient
) -> tuple[list[ProcessGroup], list[Snapshot]]:
    if not settings.process_exporter_url:
        return [], []
    try:
        scraped = await scrape_groups(
            http,
            settings.process_exporter_url,
            timeout_s=settings.timeout_s,
            keep_raw=settings.keep_raw_output,
        )
    except CollectError as exc:
        log.warning(
            "process_exporter unreachable, report goes out without groups",
            extra={"kv": {"url": settings.process_exporter_url, "error": str(exc)}},
        )
        return [], []
    return scraped.groups, [scraped.snapshot]


async def _process_table(
    os_type: str, runner: Any, scrubber: Scrubber, keep_raw: bool, collected_at: datetime
) -> tuple[list[ProcessSample], list[Snapshot]]:
    kwargs: dict[str, Any] = {"scrub": scrubber, "keep_raw": keep_raw, "now": collected_at}
    if runner is not None:
        kwargs["runner"] = runner
    try:
        table = await collect_process_table(os_type=os_type, **kwargs)
    except CollectError as exc:
        log.warning(
            "process table not collected, report goes out without processes",
            extra={"kv": {"os_type": os_type, "error": str(exc)}},
        )
        return [], []
    return table.processes, table.snapshots


async def build_report(
    settings: AgentSettings,
    *,
    http: httpx.AsyncClient,
    runner: Any = None,
    scrubber: Scrubber | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    report_id: str | None = None,
    host: Host | None = None,
) -> Report:
    """Collect everything for one tick and return the report (validated by the contract).

    ``runner`` is the process-table collector's command runner (None: its default, the real
    ``ps`` / ``tasklist``); ``http`` is used to scrape process_exporter. ``host`` may be
    collected once by the caller (it does not change while the agent runs).
    """
    collected_at = now()
    host = host or host_of(settings)
    (groups, group_snaps), (processes, table_snaps) = await asyncio.gather(
        _groups(settings, http),
        _process_table(
            host.os_type,
            runner,
            scrubber or make_scrubber(settings),
            settings.keep_raw_output,
            collected_at,
        ),
    )
    processes = cap_processes(processes, settings.max_processes, settings.pinned_names)
    return Report(
        report_id=report_id or new_report_id(now_ms=int(collected_at.timestamp() * 1000)),
        host=host,
        collected_at=collected_at,
        process_groups=groups,
        processes=processes,
        snapshots=group_snaps + table_snaps,
    )
