"""The enqueue fast path: every message of a report into its shard's stream, all-or-nothing.

One report goes to one shard (its host's), so a report is one pipeline: the ``XADD`` commands
are framed as RESP bytes here (the per-shard part of each command is built once), written in
one go on a raw connection and their replies parsed in bulk by hiredis. Every reply is checked:
the report counts as enqueued only if every ``XADD`` returned an id. A partial failure is a 503;
the agent's retry may add some messages twice, which the database keys absorb.

Per report, on one connection:
  1. ``EXISTS procfleet:report:<id>``        → already enqueued once: duplicate, send nothing
  2. ``XADD <stream> * m <payload>`` × N      (then, when durability is asked, wait for the
     AOF fsync through the group-commit ``durability.AofBarrier``)
  3. ``SET procfleet:report:<id> 1 EX ttl``  only after every reply of step 2 is an id (its
     reply is not waited for: the next round trip on the connection reads it)

Entries use ``*`` ids and no ``MAXLEN``: trimming would drop unread samples.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ingest_gateway import stream
from ingest_gateway.errors import Unavailable
from ingest_gateway.ingest.durability import AofBarrier
from ingest_gateway.ingest.messages import ReportMessages
from ingest_gateway.ingest.resp import RespPool, first_error, pack_command

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnqueueResult:
    """What happened to one report."""

    duplicate: bool
    messages: int = 0
    payload_bytes: int = 0


def xadd_prefix(shard: int) -> bytes:
    """``XADD <stream> * m`` in RESP: everything of a command but the payload."""
    key = stream.sample_stream(shard).encode()
    return b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$%d\r\n%s\r\n" % (
        len(key), key, len(stream.FIELD_MESSAGE), stream.FIELD_MESSAGE)


def frame_xadds(prefix: bytes, payloads: list[bytes]) -> bytes:
    """The RESP bytes of one ``XADD`` per payload."""
    parts: list[bytes] = []
    append = parts.append
    for data in payloads:
        append(prefix)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


class Enqueuer:
    """Sends reports' messages through a ``RespPool``; raises ``Unavailable`` (503) on any
    Redis failure. With an ``AofBarrier`` it answers only once the AOF is fsynced."""

    def __init__(
        self,
        pool: RespPool,
        *,
        shards: int,
        dedupe_ttl_s: int,
        timeout_s: float,
        retry_after_s: int,
        barrier: AofBarrier | None = None,
    ) -> None:
        self.pool = pool
        self.dedupe_ttl_s = dedupe_ttl_s
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.barrier = barrier
        self._prefixes = [xadd_prefix(shard) for shard in range(shards)]

    def _unavailable(self, reason: str, kind: str) -> Unavailable:
        return Unavailable("redis", reason, kind=kind, retry_after_s=self.retry_after_s)

    async def enqueue(self, messages: ReportMessages) -> EnqueueResult:
        """All messages of one report, or an ``Unavailable`` error."""
        seen_key = stream.report_seen_key(messages.report_id)
        remember = pack_command("SET", seen_key, 1, "EX", self.dedupe_ttl_s)
        batch = frame_xadds(self._prefixes[messages.shard], messages.payloads)
        n_replies = len(messages.payloads)
        try:
            # One deadline for the whole report, waiting for a pooled connection included.
            async with asyncio.timeout(self.timeout_s), self.pool.connection() as conn:
                (seen,) = await conn.roundtrip(pack_command("EXISTS", seen_key), 1,
                                               self.timeout_s)
                if isinstance(seen, Exception):
                    raise self._unavailable(f"Redis refused EXISTS: {seen}", _error_kind(seen))
                if seen:
                    return EnqueueResult(duplicate=True)
                replies = await conn.roundtrip(batch, n_replies, self.timeout_s)
                error = first_error(replies)
                if error is not None:
                    failed = sum(isinstance(r, Exception) for r in replies)
                    log.warning("report partially enqueued", extra={"kv": {
                        "report_id": messages.report_id, "failed": failed, "of": n_replies,
                        "error": str(error)}})
                    raise self._unavailable(f"Redis refused {failed} of {n_replies} commands: "
                                            f"{error}", _error_kind(error))
                if self.barrier is None:
                    # Every message is in. The SET's reply is read by the connection's next
                    # user: dedupe is an optimisation and does not change our answer.
                    conn.send_deferred(remember, 1)
            if self.barrier is not None:
                await self.barrier.wait()  # the connection is back in the pool meanwhile
                async with asyncio.timeout(self.timeout_s), self.pool.connection() as conn:
                    conn.send_deferred(remember, 1)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise self._unavailable(f"Redis unreachable: {exc or type(exc).__name__}",
                                    "redis") from None
        return EnqueueResult(duplicate=False, messages=len(messages.payloads),
                             payload_bytes=messages.payload_bytes)


def _error_kind(error: Exception) -> str:
    """Metric label of a Redis error reply: ``redis_oom`` is worth telling apart."""
    return "redis_oom" if str(error).startswith("OOM") else "redis_error"
