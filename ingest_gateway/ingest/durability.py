"""Group commit for ``WAITAOF``: one wait covers every report enqueued before it.

``WAITAOF 1 0 <ms>`` blocks *its connection* until that connection's last write is fsynced to
the AOF. With ``appendfsync everysec`` that takes up to a second, so waiting on each report's
own connection would hold a pooled connection per report for that long and cap throughput at
``pool size`` reports per second. Instead, a report whose ``XADD``s all succeeded releases its
connection and joins the barrier: one task writes ``INCR procfleet:aof_barrier`` followed by
``WAITAOF`` on one connection. Redis executes commands in order, so that ``INCR`` comes after
the ``XADD``s of every report that joined before it was sent; once it is fsynced, so are they
(the AOF is written in execution order). Reports that join while a wait is in progress ride on
the next one.
"""

from __future__ import annotations

import asyncio
import logging

from ingest_gateway import stream
from ingest_gateway.errors import Unavailable
from ingest_gateway.ingest.resp import RespPool, pack_command

log = logging.getLogger(__name__)


class AofBarrier:
    """``await barrier.wait()`` returns once everything written before the call is fsynced to
    the local AOF, or raises ``Unavailable`` (503)."""

    def __init__(self, pool: RespPool, *, wait_aof_timeout_ms: int, timeout_s: float,
                 retry_after_s: int) -> None:
        self.pool = pool
        self.wait_aof_timeout_ms = wait_aof_timeout_ms
        self.timeout_s = timeout_s + wait_aof_timeout_ms / 1000
        self.retry_after_s = retry_after_s
        self._commands = (pack_command("INCR", stream.AOF_BARRIER_KEY)
                          + pack_command("WAITAOF", 1, 0, wait_aof_timeout_ms))
        self._waiting: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.rounds = 0

    async def wait(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="aof-barrier")
        await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            error = await self._wait_once()
            self.rounds += 1
            for future in batch:
                if future.done():  # its request was cancelled meanwhile
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def _wait_once(self) -> Unavailable | None:
        try:
            async with asyncio.timeout(self.timeout_s), self.pool.connection() as conn:
                incr, waitaof = await conn.roundtrip(self._commands, 2, self.timeout_s)
        except (ConnectionError, OSError, TimeoutError) as exc:
            return self._unavailable(f"Redis unreachable while waiting for the AOF: {exc}")
        for reply in (incr, waitaof):
            if isinstance(reply, Exception):
                return self._unavailable(f"WAITAOF failed: {reply}")
        if not isinstance(waitaof, list) or not waitaof or waitaof[0] < 1:
            log.warning("AOF not fsynced in time", extra={"kv": {
                "timeout_ms": self.wait_aof_timeout_ms, "reply": repr(waitaof)}})
            return self._unavailable(
                f"AOF not fsynced within {self.wait_aof_timeout_ms} ms (WAITAOF {waitaof!r})")
        return None

    def _unavailable(self, reason: str) -> Unavailable:
        return Unavailable("redis", reason, kind="wait_aof", retry_after_s=self.retry_after_s)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
