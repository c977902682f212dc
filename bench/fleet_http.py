"""A minimal HTTP/1.1 keep-alive client for the simulated agents: POST one body, read the answer.

The load generator shares the box with the pipeline it measures, so it must cost as little CPU
per report as a load tool: httpx' request machinery (URL and header models, pool bookkeeping,
anyio layers) cost more than building and gzipping the report. This client writes the request
with one pre-encoded header block and reads the answer on asyncio streams; it does nothing
else (no redirects, cookies, proxies or decompression). ``https://`` works through asyncio's
TLS with the default context.

Errors, all ``TransportError`` (what the agent would retry):

    TransportError          -- the exchange failed; ``sent`` tells whether request bytes left
    └── ConnectError        -- no connection could be made (``sent`` is False)
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_HEADER_BYTES = 64 * 1024


class TransportError(Exception):
    """The request got no complete answer; ``sent`` = request bytes were (partly) written."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectError(TransportError):
    """Connecting failed or timed out: nothing of the request left."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


@dataclass(slots=True)
class HttpResponse:
    """Status, headers (names lower-cased) and body of one answer."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        # An idle connection the server closed has seen EOF (the loop reads it in the
        # background): reusing it would fail the next request for nothing.
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """Keep-alive connections to one origin; POSTs ``body`` to ``path``.

    The caller bounds concurrency (a semaphore of ``max connections``): the pool opens a
    connection whenever none is idle and keeps every one that may be reused.
    """

    def __init__(self, base_url: str, headers: dict[str, str], *, timeout_s: float,
                 connect_timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"gateway URL must be http:// or https://host[:port]: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or DEFAULT_PORTS[parts.scheme]
        self._tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        authority = parts.netloc.rpartition("@")[2]
        self._fixed_headers = "".join(
            f"{name}: {value}\r\n" for name, value in {"Host": authority, **headers}.items())
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._idle: list[_Connection] = []  # LIFO: the hottest connection first

    async def post(self, path: str, body: bytes) -> HttpResponse:
        """One POST of ``body``; raises ``TransportError`` when no full answer came."""
        head = (f"POST {self._prefix}{path} HTTP/1.1\r\n{self._fixed_headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        conn = await self._checkout()
        try:
            async with asyncio.timeout(self.timeout_s):
                conn.writer.write(head + body)
                await conn.writer.drain()
                response, keep = await _read_response(conn.reader)
        except TimeoutError as exc:
            conn.close()
            raise TransportError(f"no answer within {self.timeout_s} s", sent=True) from exc
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            conn.close()
            raise TransportError(f"{type(exc).__name__}: {exc}", sent=True) from exc
        except BaseException:
            conn.close()  # cancelled mid-exchange: the connection's state is unknown
            raise
        if keep:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _checkout(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, limit=MAX_HEADER_BYTES)
        except TimeoutError as exc:
            raise ConnectError(f"{self._host}:{self._port}: no connection within "
                               f"{self.connect_timeout_s} s") from exc
        except OSError as exc:  # refused, unreachable, TLS handshake (ssl.SSLError)
            raise ConnectError(f"{self._host}:{self._port}: {type(exc).__name__}: {exc}") from exc
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        """Close the idle connections (the in-use ones belong to their requests)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)


async def _read_response(reader: asyncio.StreamReader) -> tuple[HttpResponse, bool]:
    """The next answer on ``reader`` and whether the connection may be reused."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:-2]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"malformed header line: {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
        if status >= 200:
            break  # 1xx (e.g. 100 Continue) precede the real answer
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304):
        body = b""
    else:
        body, keep = await reader.read(), False  # delimited by the end of the connection
    return HttpResponse(status, headers, body), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
