"""Running the gateway: the listener (optionally TLS), signals and a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl

from aiohttp import web

from ingest_gateway.app import create_app
from ingest_gateway.app_state import METRICS, STATE, GatewayState
from ingest_gateway.settings import GatewaySettings
from ingest_gateway.slow_clients import HeaderDeadlines

log = logging.getLogger(__name__)


def tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """Server TLS context from the cert/key settings, or None for plain HTTP."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


class GuardedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose connections get a header deadline (``slow_clients``): aiohttp's
    own listener has none. Same options otherwise."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 deadlines: HeaderDeadlines, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.deadlines = deadlines

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.deadlines.wrap(server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port)


DRAIN_POLL_S = 0.05
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Tune the collector of the gateway process (the CLI calls this once at start).

    A report of 300 processes allocates thousands of short-lived objects; with the default
    threshold (700) the collector runs several times per report. Freezing what startup
    allocated and collecting less often saved ~10% of the CPU of validating and encoding a report
    (measured while writing bench/bench_enqueue.py, which runs with it); memory stays bounded
    by the body size limit."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def _drain(runner: web.AppRunner, state: GatewayState, timeout_s: float) -> None:
    """Stop listening, then wait for requests in flight before ``runner.cleanup``.

    aiohttp's own graceful shutdown stops reading from open connections at once, so a request
    whose body is still arriving would never finish; draining first lets it complete."""
    for site in list(runner.sites):
        await site.stop()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while state.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(DRAIN_POLL_S)


async def serve(settings: GatewaySettings, host: str, port: int,
                stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``): then stop accepting, let in-flight requests
    finish (up to ``shutdown_timeout_s``) and close the Redis clients."""
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        deadlines = HeaderDeadlines(settings.header_timeout_s,
                                    app[METRICS].slow_clients.labels("headers").inc)
        app[STATE].header_deadlines = deadlines
        site = GuardedTCPSite(runner, host, port, deadlines=deadlines,
                              ssl_context=tls_context(settings))
        await site.start()
        scheme = "https" if settings.tls_cert_file else "http"
        log.info("gateway listening", extra={"kv": {"url": f"{scheme}://{host}:{port}"}})
        await stop.wait()
        state = app[STATE]
        log.info("gateway stopping: finishing in-flight requests", extra={"kv": {
            "in_flight": state.in_flight, "shutdown_timeout_s": settings.shutdown_timeout_s}})
        await _drain(runner, state, settings.shutdown_timeout_s)
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
