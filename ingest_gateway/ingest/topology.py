"""Stream topology in Redis: the shard count everyone agrees on, the consumer groups, and what
the server supports (``WAITAOF``)."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from agent.errors import ConfigError
from ingest_gateway import stream

log = logging.getLogger(__name__)


async def register_shards(redis: Redis, shards: int) -> None:
    """Store the shard count (first gateway wins) and refuse a different one: hosts would move
    to other streams and the workers, which read this key, would miss shards."""
    await redis.set(stream.SHARDS_KEY, shards, nx=True)
    stored = await redis.get(stream.SHARDS_KEY)
    if stored is not None and int(stored) != shards:
        raise ConfigError(
            "PROCFLEET_SHARDS", shards,
            f"Redis already holds {int(stored)} shards in {stream.SHARDS_KEY!r}; start the "
            f"gateway with PROCFLEET_SHARDS={int(stored)}, or drain every stream and delete "
            f"that key to change the count",
        )


async def ensure_group(redis: Redis, shard: int) -> bool:
    """Create the ``digest`` group (and the stream) of ``shard`` at id ``0``, so that entries
    added before the group existed are delivered too; False if it already existed."""
    try:
        await redis.xgroup_create(stream.sample_stream(shard), stream.GROUP, id="0",
                                  mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


def digest_group(groups: list[dict]) -> dict | None:
    """The ``digest`` group's entry of an ``XINFO GROUPS`` reply (names may be bytes)."""
    for group in groups:
        if group.get("name") in (stream.GROUP, stream.GROUP.encode()):
            return group
    return None


async def probe_wait_aof(redis: Redis) -> tuple[bool, str]:
    """Whether ``WAITAOF 1 0`` works here (Redis >= 7.2 / Valkey with AOF on), and why not."""
    try:
        await redis.execute_command("WAITAOF", 1, 0, 1)
    except ResponseError as exc:
        text = str(exc)
        if "unknown command" in text.lower():
            return False, "server has no WAITAOF (needs Redis >= 7.2 or Valkey >= 8)"
        if "appendonly" in text.lower():
            return False, "server runs without AOF (appendonly no)"
        return False, text
    return True, ""
