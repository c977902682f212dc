"""Slow clients: a bound on the time a client may take to send its request headers.

aiohttp has no header read timeout: a connection that sends half a request line and then a
byte now and then stays open for as long as it likes (slowloris), each one holding a socket
and a parser. ``HeaderDeadlines`` wraps every connection's protocol (``wrap``, used by
``server.GuardedTCPSite``): from the moment a connection is accepted, and again from the first
byte after each response, the client has ``header_timeout_s`` to complete its headers (the
``observe`` middleware reports each request that starts, see ``request_started``); past it the
connection is closed and counted (``on_cut_off``). Idle keep-alive connections that send
nothing are aiohttp's ``keepalive_timeout`` (``GatewaySettings.keepalive_timeout_s``).

The body has its own bound, ``body_timeout_s``, applied where the body is read
(``body.read_body``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class HeaderDeadlines:
    """The connections of one listener and their header deadlines."""

    def __init__(self, header_timeout_s: float, on_cut_off: Callable[[], None]) -> None:
        self.header_timeout_s = header_timeout_s
        self.on_cut_off = on_cut_off
        self._guards: dict[Any, _Guard] = {}  # transport -> its connection's guard

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory whose connections have a header deadline."""
        return lambda: _Guard(self, factory())

    def request_started(self, transport: Any) -> None:
        """The headers of a request on ``transport`` are complete: no deadline until it ends."""
        guard = self._guards.get(transport)
        if guard is not None:
            guard.in_request = True
            guard.disarm()

    def request_finished(self, transport: Any) -> None:
        """The request on ``transport`` is answered: the next one's headers get a deadline from
        their first byte."""
        guard = self._guards.get(transport)
        if guard is not None:
            guard.in_request = False

    @property
    def open_connections(self) -> int:
        return len(self._guards)


class _Guard(asyncio.Protocol):
    """Forwards every event to aiohttp's protocol; closes the connection at the deadline."""

    def __init__(self, deadlines: HeaderDeadlines, inner: asyncio.Protocol) -> None:
        self.deadlines, self.inner = deadlines, inner
        self.transport: asyncio.BaseTransport | None = None
        self.in_request = False
        self._timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.deadlines.header_timeout_s, self._cut_off)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cut_off(self) -> None:
        self._timer = None
        if self.in_request or self.transport is None or self.transport.is_closing():
            return
        peer = self.transport.get_extra_info("peername")
        log.warning("slow client cut off: request headers not complete in time",
                    extra={"kv": {"peer": str(peer),
                                  "header_timeout_s": self.deadlines.header_timeout_s}})
        self.deadlines.on_cut_off()
        self.transport.close()

    # -- asyncio.Protocol, forwarded ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.deadlines._guards[transport] = self
        self.arm()  # the first request's headers: from the moment the connection is accepted
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_request:
            self.arm()  # the first byte of the next request (no-op if already armed)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.deadlines._guards.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
