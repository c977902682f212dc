"""Group commit for ``WAITAOF`` / ``WAIT``: one wait covers every report enqueued before it.

``WAITAOF 1 0 <ms>`` blocks *its connection* until that connection's last write is fsynced to
the AOF. With ``appendfsync everysec`` that takes up to a second, so waiting on each report's
own connection would hold a pooled connection per report for that long and cap throughput at
``pool size`` reports per second. Instead, a report whose ``XADD``s all succeeded releases its
connection and joins the barrier: one task writes ``INCR procfleet:aof_barrier`` followed by
``WAITAOF`` on one connection. Redis executes commands in order, so that ``INCR`` comes after
the ``XADD``s of every report that joined before it was sent; once it is fsynced, so are they
(the AOF is written in execution order). Reports that join while a wait is in progress ride on
the next one.

``WAIT <replicas>`` (``PROCFLEET_WAIT_REPLICAS``) works the same way: it blocks until the
replicas acknowledged the replication offset of the connection's last write, the ``INCR``,
which comes after every ``XADD`` that joined before it. With both asked and ``WAITAOF``
available, one ``WAITAOF 1 <replicas>`` covers both. On a cluster there is one barrier per
shard (``cluster_enqueue``): its ``INCR`` key carries the shard's hash tag, so it lands on the
master that holds the shard's stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ingest_gateway import stream
from ingest_gateway.errors import Unavailable
from ingest_gateway.ingest.resp import RespPool, pack_command

log = logging.getLogger(__name__)


class AofBarrier:
    """``await barrier.wait()`` returns once everything written before the call is fsynced to
    the local AOF (``wait_aof``) and acknowledged by ``replicas`` replicas, or raises
    ``Unavailable`` (503). ``pool`` may be a function returning the pool to use now (on a
    cluster, the pool of the master that holds ``key``)."""

    def __init__(self, pool: RespPool | Callable[[], RespPool], *, wait_aof_timeout_ms: int,
                 timeout_s: float, retry_after_s: int, wait_aof: bool = True,
                 replicas: int = 0, key: str = stream.AOF_BARRIER_KEY,
                 on_failure: Callable[[], None] | None = None) -> None:
        self._pool = pool
        self.wait_aof_timeout_ms = wait_aof_timeout_ms
        self.timeout_s = timeout_s + wait_aof_timeout_ms / 1000
        self.retry_after_s = retry_after_s
        self.wait_aof, self.replicas, self.on_failure = wait_aof, replicas, on_failure
        if wait_aof:
            wait = pack_command("WAITAOF", 1, replicas, wait_aof_timeout_ms)
        else:
            wait = pack_command("WAIT", replicas, wait_aof_timeout_ms)
        self._commands = pack_command("INCR", key) + wait
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

    @property
    def pool(self) -> RespPool:
        return self._pool if isinstance(self._pool, RespPool) else self._pool()

    async def _wait_once(self) -> Unavailable | None:
        error = await self._wait_reply()
        if error is not None and self.on_failure is not None:
            self.on_failure()
        return error

    async def _wait_reply(self) -> Unavailable | None:
        try:
            async with asyncio.timeout(self.timeout_s), self.pool.connection() as conn:
                incr, waitaof = await conn.roundtrip(self._commands, 2, self.timeout_s)
        except (ConnectionError, OSError, TimeoutError) as exc:
            return self._unavailable(f"Redis unreachable while waiting for the AOF: {exc}")
        for reply in (incr, waitaof):
            if isinstance(reply, Exception):
                return self._unavailable(f"{'WAITAOF' if self.wait_aof else 'WAIT'} failed: "
                                         f"{reply}")
        if not self.wait_aof:
            if not isinstance(waitaof, int) or waitaof < self.replicas:
                log.warning("replicas did not acknowledge in time", extra={"kv": {
                    "timeout_ms": self.wait_aof_timeout_ms, "replicas": self.replicas,
                    "acknowledged": waitaof}})
                return self._unavailable(
                    f"{waitaof} of {self.replicas} replicas acknowledged within "
                    f"{self.wait_aof_timeout_ms} ms (WAIT)", kind="wait_replicas")
            return None
        if isinstance(waitaof, list) and len(waitaof) == 2 and waitaof[0] >= 1 \
                and waitaof[1] < self.replicas:
            log.warning("replicas did not fsync in time", extra={"kv": {
                "timeout_ms": self.wait_aof_timeout_ms, "replicas": self.replicas,
                "acknowledged": waitaof[1]}})
            return self._unavailable(
                f"{waitaof[1]} of {self.replicas} replicas fsynced within "
                f"{self.wait_aof_timeout_ms} ms (WAITAOF)", kind="wait_replicas")
        if not isinstance(waitaof, list) or not waitaof or waitaof[0] < 1:
            log.warning("AOF not fsynced in time", extra={"kv": {
                "timeout_ms": self.wait_aof_timeout_ms, "reply": repr(waitaof)}})
            return self._unavailable(
                f"AOF not fsynced within {self.wait_aof_timeout_ms} ms (WAITAOF {waitaof!r})")
        return None

    def _unavailable(self, reason: str, kind: str = "wait_aof") -> Unavailable:
        return Unavailable("redis", reason, kind=kind, retry_after_s=self.retry_after_s)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
