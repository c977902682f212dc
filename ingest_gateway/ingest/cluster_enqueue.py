"""The enqueue fast path on a Redis Cluster / Valkey cluster.

Same steps and answers as ``enqueue.Enqueuer`` (dedupe ``EXISTS``, the report's ``XADD``s,
the durability barrier, then the dedupe ``SET``), but each step goes to the master that serves
its key: the ``XADD``s of a report all name one shard's stream, so they are one pipeline to one
node; the dedupe key ``procfleet:report:<id>`` hashes elsewhere and is asked of its own node.
No command names two slots and nothing uses ``MULTI``.

A ``MOVED`` reply re-sends the refused commands to the named node and refreshes the slot map;
an ``ASK`` reply re-sends them once, each behind ``ASKING``, to the importing node. Only the
commands that were refused are re-sent, so a report is never written twice by a redirection.
A node that cannot be reached, or ``CLUSTERDOWN`` / ``TRYAGAIN`` (a failover or a migration
in progress) is a 503 with ``Retry-After``, and the slot map is refreshed in the background.

With a barrier factory (``PROCFLEET_WAIT_AOF`` / ``PROCFLEET_WAIT_REPLICAS``) each shard has
its own group commit on the master that holds it (``durability.AofBarrier``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ingest_gateway import stream
from ingest_gateway.errors import Unavailable
from ingest_gateway.ingest.cluster import ClusterRouter, parse_redirect, roundtrip_on, slot_of
from ingest_gateway.ingest.durability import AofBarrier
from ingest_gateway.ingest.enqueue import EnqueueResult, _error_kind, frame_xadds, xadd_prefix
from ingest_gateway.ingest.messages import ReportMessages
from ingest_gateway.ingest.resp import ReplyError, pack_command

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
ASKING = pack_command("ASKING")
# Replies that mean "this slot has no usable master right now": retry later, refresh the map.
TRANSIENT_PREFIXES = ("CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN", "READONLY")


def barrier_key(shard: int) -> str:
    """The group-commit key of a shard: its hash tag puts it on the shard stream's master."""
    return f"{stream.AOF_BARRIER_KEY}:{{{shard}}}"


class ClusterEnqueuer:
    """``enqueue(messages)`` on a cluster; raises ``Unavailable`` (503) on any failure."""

    def __init__(
        self,
        router: ClusterRouter,
        *,
        shards: int,
        dedupe_ttl_s: int,
        timeout_s: float,
        retry_after_s: int,
        barrier: Callable[[int], AofBarrier] | None = None,
    ) -> None:
        self.router = router
        self.dedupe_ttl_s = dedupe_ttl_s
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._prefixes = [xadd_prefix(shard) for shard in range(shards)]
        self._slots = [slot_of(stream.sample_stream(shard)) for shard in range(shards)]
        self.barriers = [barrier(shard) for shard in range(shards)] if barrier else None

    def _unavailable(self, reason: str, kind: str) -> Unavailable:
        return Unavailable("redis", reason, kind=kind, retry_after_s=self.retry_after_s)

    async def enqueue(self, messages: ReportMessages) -> EnqueueResult:
        """All messages of one report, or an ``Unavailable`` error."""
        seen_key = stream.report_seen_key(messages.report_id)
        seen_slot = slot_of(seen_key)
        prefix, payloads = self._prefixes[messages.shard], messages.payloads

        def xadd(i: int) -> bytes:  # one command again, only for a redirection
            return b"%s$%d\r\n%s\r\n" % (prefix, len(payloads[i]), payloads[i])

        exists = pack_command("EXISTS", seen_key)
        try:
            async with asyncio.timeout(self.timeout_s):
                (seen,) = await self._send(seen_slot, exists, 1, lambda i: exists)
                if isinstance(seen, Exception):
                    raise self._unavailable(f"Redis refused EXISTS: {seen}", _error_kind(seen))
                if seen:
                    return EnqueueResult(duplicate=True)
                replies = await self._send(self._slots[messages.shard],
                                           frame_xadds(prefix, payloads), len(payloads), xadd)
            failed = [r for r in replies if isinstance(r, Exception)]
            if failed:
                log.warning("report partially enqueued", extra={"kv": {
                    "report_id": messages.report_id, "failed": len(failed),
                    "of": len(payloads), "error": str(failed[0])}})
                raise self._unavailable(f"Redis refused {len(failed)} of {len(payloads)} "
                                        f"commands: {failed[0]}", _error_kind(failed[0]))
            if self.barriers is not None:
                await self.barriers[messages.shard].wait()
            # Dedupe is an optimisation: its reply is read by the connection's next user.
            async with asyncio.timeout(self.timeout_s), \
                    self.router.pool_for_slot(seen_slot).connection() as conn:
                conn.send_deferred(pack_command("SET", seen_key, 1, "EX", self.dedupe_ttl_s), 1)
        except (ConnectionError, OSError, TimeoutError) as exc:
            self.router.note_failure()
            raise self._unavailable(f"Redis unreachable: {exc or type(exc).__name__}",
                                    "redis") from None
        return EnqueueResult(duplicate=False, messages=len(messages.payloads),
                             payload_bytes=messages.payload_bytes)

    async def _send(self, slot: int, data: bytes, n: int,
                    command_at: Callable[[int], bytes]) -> list:
        """Send ``data`` (``n`` commands, all of one slot) to the slot's master, following
        redirections (``command_at(i)`` re-frames command ``i`` alone); returns one reply per
        command (an error reply is a ``ReplyError`` in the list)."""
        replies: list = [None] * n
        pending = list(range(n))
        address, asking = self.router.owner(slot), False
        for attempt in range(MAX_REDIRECTS + 1):
            if asking:
                data = b"".join(ASKING + command_at(i) for i in pending)
                got = (await roundtrip_on(self.router.pool(address), data, 2 * len(pending),
                                          self.timeout_s))[1::2]
            else:
                if attempt:
                    data = b"".join(command_at(i) for i in pending)
                got = await roundtrip_on(self.router.pool(address), data, len(pending),
                                         self.timeout_s)
            redirected, redirect = [], None
            for i, reply in zip(pending, got, strict=True):
                target = parse_redirect(reply) if isinstance(reply, ReplyError) else None
                if target is None:
                    replies[i] = reply
                    if isinstance(reply, ReplyError) and str(reply).startswith(
                            TRANSIENT_PREFIXES):
                        self.router.note_failure()
                else:
                    redirected.append(i)
                    redirect = target
            if redirect is None:
                return replies
            kind, _, address = redirect
            asking = kind == "ASK"
            if not asking:
                self.router.moved(slot, address)  # the slot moved for good
            pending = redirected
        raise self._unavailable(f"slot {slot} still redirected after {MAX_REDIRECTS} "
                                f"redirections", "redis_redirect")

    async def close(self) -> None:
        for barrier in self.barriers or ():
            await barrier.close()
