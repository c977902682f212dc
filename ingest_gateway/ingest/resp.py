"""Raw RESP2 connections for the enqueue fast path.

redis-py spends most of a pipelined ``XADD`` in Python bookkeeping per command (packing each
argument, a response callback, an ``await`` per reply). The fast path instead writes
pre-framed bytes for a whole report in one ``write`` and parses the replies with hiredis in
bulk. These connections are opened with the same parameters as the gateway's redis-py client
(host/port or unix socket, TLS, user/password, db), so both always talk to the same server.

A connection whose round trip was interrupted (timeout, cancellation, broken pipe) is closed,
never returned to the pool: its reply stream can no longer be matched to requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from agent.errors import ProcfleetError

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 256 * 1024
ReplyError = hiredis.ReplyError


class RespConnectionError(ProcfleetError, ConnectionError):
    """The server closed the connection or could not be reached (a ``ConnectionError`` too, so
    the enqueue path's transport handling catches it with the socket's own errors)."""


def pack_command(*args: bytes | str | int) -> bytes:
    """One command in RESP2 (``*N`` then ``$len`` + bytes per argument)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass(frozen=True)
class ConnectParams:
    """Where and how to connect; built from a redis-py client with ``from_redis``."""

    host: str | None = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_redis(cls, client: Redis) -> ConnectParams:
        pool = client.connection_pool
        kwargs: dict[str, Any] = pool.connection_kwargs
        ssl_context = None
        if issubclass(pool.connection_class, SSLConnection):
            # Reuse redis-py's reading of ssl_* options so both clients verify alike.
            ssl_context = pool.connection_class(**kwargs).ssl_context.get()
        is_unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
        return cls(
            host=None if is_unix else kwargs.get("host", "127.0.0.1"),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path") if is_unix else None,
            db=int(kwargs.get("db", 0) or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=ssl_context,
        )


class RespConnection:
    """One socket, strict request/response: write a batch, read exactly its replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._parser = hiredis.Reader()
        self._deferred = 0  # replies of send_deferred() not read yet
        self.broken = False

    @classmethod
    async def open(cls, params: ConnectParams, timeout_s: float) -> RespConnection:
        try:
            async with asyncio.timeout(timeout_s):
                if params.path:
                    reader, writer = await asyncio.open_unix_connection(params.path)
                else:
                    reader, writer = await asyncio.open_connection(
                        params.host, params.port, ssl=params.ssl_context,
                        limit=READ_CHUNK_BYTES,
                    )
        except (OSError, TimeoutError) as exc:
            where = params.path or f"{params.host}:{params.port}"
            raise RespConnectionError(f"cannot connect to Redis at {where}: {exc}") from exc
        conn = cls(reader, writer)
        setup: list[bytes] = []
        if params.password is not None:
            auth = [params.username, params.password] if params.username else [params.password]
            setup.append(pack_command("AUTH", *auth))
        if params.db:
            setup.append(pack_command("SELECT", params.db))
        if setup:
            try:
                replies = await conn.roundtrip(b"".join(setup), len(setup), timeout_s)
            except BaseException:
                conn.close()
                raise
            error = first_error(replies)
            if error is not None:
                conn.close()
                raise RespConnectionError(f"Redis refused the connection setup: {error}")
        return conn

    def send_deferred(self, data: bytes, n_replies: int) -> None:
        """Write commands without waiting for their replies: the next ``roundtrip`` on this
        connection reads them first and logs any error. Saves a round trip for a command
        whose outcome does not change the answer (the dedupe ``SET``)."""
        self._writer.write(data)
        self._deferred += n_replies

    async def roundtrip(self, data: bytes, n_replies: int, timeout_s: float) -> list[Any]:
        """Send ``data`` (``n_replies`` commands) and return their replies in order; an error
        reply is a ``ReplyError`` in the list, not an exception."""
        replies: list[Any] = []
        deferred, self._deferred = self._deferred, 0
        n_replies += deferred
        try:
            async with asyncio.timeout(timeout_s):
                self._writer.write(data)
                await self._writer.drain()
                parser, read = self._parser, self._reader.read
                while len(replies) < n_replies:
                    chunk = await read(READ_CHUNK_BYTES)
                    if not chunk:
                        raise RespConnectionError("Redis closed the connection")
                    parser.feed(chunk)
                    reply = parser.gets()
                    while reply is not False:
                        replies.append(reply)
                        reply = parser.gets()
        except BaseException:
            self.broken = True
            raise
        if len(replies) != n_replies:
            self.broken = True
            raise RespConnectionError(f"expected {n_replies} replies, got {len(replies)}")
        if deferred:
            error = first_error(replies[:deferred])
            if error is not None:
                log.warning("deferred command failed", extra={"kv": {"error": str(error)}})
            del replies[:deferred]
        return replies

    def is_stale(self) -> bool:
        """True when the server already closed this idle connection (e.g. it restarted)."""
        return self._reader.at_eof() or self._writer.is_closing()

    def close(self) -> None:
        self.broken = True
        self._writer.close()


class RespPool:
    """At most ``size`` connections, opened on demand, reused last-in first-out."""

    def __init__(self, params: ConnectParams, *, size: int, timeout_s: float) -> None:
        self.params, self.size, self.timeout_s = params, size, timeout_s
        self._idle: list[RespConnection] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[RespConnection]:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                conn = self._idle.pop()
                if conn.is_stale():
                    conn.close()
                    conn = None
            if conn is None:
                conn = await RespConnection.open(self.params, self.timeout_s)
            try:
                yield conn
            except (ConnectionError, OSError):
                # The server went away: its other idle connections are dead as well.
                self._drop_idle()
                raise
            finally:
                if conn.broken or self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def close(self) -> None:
        self._closed = True
        self._drop_idle()


def first_error(replies: Sequence[Any]) -> ReplyError | None:
    """The first error reply of a batch, if any."""
    for reply in replies:
        if isinstance(reply, ReplyError):
            return reply
    return None
