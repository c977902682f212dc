"""The agent as a process (``procfleet agent``): the real collectors, HTTP client, spool and
signal handlers wired around ``agent.runner.Agent``. The agent package itself takes all of them
as arguments (tests inject fakes); this module is the one place that builds the real ones.

Imported lazily by ``procfleet.commands.agent`` so building the ``procfleet`` parser stays
cheap; it imports nothing but the agent's own light dependencies (tests/agent/test_import_light).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable

import httpx

from agent.config import AgentSettings
from agent.enroll import EnrollingSender, HostTokenFile
from agent.errors import ConfigError
from agent.report import build_report, host_of, make_scrubber
from agent.rows import Host, Report
from agent.runner import MAX_RETRY_BUDGET_S, Agent, AgentStats
from agent.sender import REPORTS_PATH, Sender, build_client
from agent.spool import Spool, check_writable

log = logging.getLogger("agent.runner")  # the agent's one logger name, whatever module logs


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

