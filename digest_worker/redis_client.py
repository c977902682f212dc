"""Redis clients for the worker: RESP2 (redis-py 8 defaults to RESP3), commands packed by
hiredis, raw replies for the stream commands ``digest_worker.streams`` parses itself; and the
shard count the gateway publishes."""

from __future__ import annotations

import logging
from typing import Any

import hiredis
import redis.asyncio as aioredis

from ingest_gateway import stream

log = logging.getLogger(__name__)

# Commands whose replies we read raw: redis-py's reply callbacks build a dict per entry, which
# costs more than the rest of the worker's Redis work together.
RAW_REPLY_COMMANDS = ("XREADGROUP", "XAUTOCLAIM", "XPENDING", "XCLAIM", "XRANGE")


class _HiredisPacking:
    """Pack commands with hiredis (C) instead of redis-py's asyncio packer (Python, quadratic
    in the number of arguments): an ``XACK`` of 5000 ids costs 10x less."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


def connect(url: str, socket_timeout_s: float, single_connection: bool = False,
            ) -> aioredis.Redis:
    """A RESP2 client with raw replies for the stream commands we parse ourselves."""
    client = aioredis.Redis.from_url(
        url, protocol=2, socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s, single_connection_client=single_connection,
    )
    pool = client.connection_pool
    pool.connection_class = type(
        f"HiredisPacking{pool.connection_class.__name__}",
        (_HiredisPacking, pool.connection_class), {},
    )
    for command in RAW_REPLY_COMMANDS:
        client.set_response_callback(command, _raw)
    return client


def _raw(response: Any, **options: Any) -> Any:
    return response


async def shard_count(client: aioredis.Redis, fallback: int) -> int:
    """The gateway's shard count (``stream.SHARDS_KEY``), else ``fallback``."""
    raw = await client.get(stream.SHARDS_KEY)
    try:
        shards = int(raw) if raw is not None else fallback
    except ValueError:
        shards = 0
    if not 0 < shards <= stream.MAX_SHARDS:
        log.warning("ignoring invalid shard count in Redis",
                    extra={"kv": {"key": stream.SHARDS_KEY, "value": raw, "using": fallback}})
        return fallback
    return shards
