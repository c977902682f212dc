"""Backpressure: the backlog of each shard, measured in the background, checked per request.

Requests never ask Redis about the backlog: a background task refreshes it every
``backlog_refresh_s`` (one pipelined ``XINFO GROUPS`` per shard) and a request compares the
cached figure of its shard with the high-water mark. The backlog of a shard is what the
``digest`` group has not finished: ``lag + pending`` when Redis can tell the lag (>= 7.0),
else ``XLEN`` (workers trim what the group acknowledged with ``XTRIM MINID``, so the
length is about what is left to do).

The same task keeps the stream topology alive: if a shard's stream or group disappeared (Redis
restarted without its data) it recreates the group at id ``0``, so entries added before the
group came back are still delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ingest_gateway import stream
from ingest_gateway.errors import Unavailable
from ingest_gateway.ingest.topology import digest_group, ensure_group

log = logging.getLogger(__name__)


def _backlog_of(groups: list[dict], xlen: int) -> int | None:
    """Backlog of the ``digest`` group from an ``XINFO GROUPS`` reply; None if it is missing."""
    group = digest_group(groups)
    if group is None:
        return None
    lag = group.get("lag")
    if lag is None:
        return xlen
    return int(lag) + int(group.get("pending", 0))


@dataclass
class BacklogMonitor:
    """Cached backlog per shard; ``check(shard)`` raises 503 above the high-water mark."""

    redis: Redis
    shards: int
    high_water: int
    refresh_s: float
    retry_after_s: int
    on_refresh: Callable[[int, int], None] | None = None  # e.g. the metrics gauge
    backlog: dict[int, int] = field(default_factory=dict)

    def check(self, shard: int) -> None:
        backlog = self.backlog.get(shard, 0)
        if backlog > self.high_water:
            raise Unavailable(
                "backlog",
                f"shard {shard} has {backlog} messages waiting (high-water mark "
                f"{self.high_water}); retry later",
                kind="backlog", retry_after_s=self.retry_after_s,
            )

    async def refresh(self) -> None:
        """Read every shard's backlog once; recreate missing groups."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.xinfo_groups(stream.sample_stream(shard))
            pipe.xlen(stream.sample_stream(shard))
        results = await pipe.execute(raise_on_error=False)
        for shard in range(self.shards):
            groups, xlen = results[2 * shard], results[2 * shard + 1]
            if isinstance(xlen, Exception):
                raise xlen
            if isinstance(groups, Exception) and not isinstance(groups, ResponseError):
                raise groups
            # A ResponseError here is "no such key": the stream is gone.
            backlog = None if isinstance(groups, Exception) else _backlog_of(groups, xlen)
            if backlog is None:  # no such key, or no group on it
                if await ensure_group(self.redis, shard):
                    log.warning("consumer group recreated", extra={"kv": {
                        "stream": stream.sample_stream(shard), "group": stream.GROUP}})
                    # Redis lost its data: the shard count key went with it.
                    await self.redis.set(stream.SHARDS_KEY, self.shards, nx=True)
                backlog = xlen
            self.backlog[shard] = backlog
            if self.on_refresh is not None:
                self.on_refresh(shard, backlog)

    async def run(self, stopping: asyncio.Event) -> None:
        """Refresh until ``stopping`` is set (the app's background task); Redis errors are
        logged, not fatal."""
        failing = False
        while not stopping.is_set():
            try:
                await self.refresh()
                if failing:
                    log.info("backlog monitor recovered")
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("backlog monitor cannot reach Redis",
                                extra={"kv": {"error": str(exc)}})
                failing = True
            await sleep_unless_stopping(stopping, self.refresh_s)


async def sleep_unless_stopping(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stopping`` is set meanwhile.

    Background loops stop on this event rather than on cancellation alone: a cancellation that
    lands inside a redis-py call can be swallowed there, leaving the loop running."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
