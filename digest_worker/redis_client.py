"""Redis clients for the worker: RESP2 (redis-py 8 defaults to RESP3), commands packed by
hiredis, raw replies for the stream commands ``digest_worker.streams`` parses itself; and the
shard count the gateway publishes.

``open_clients`` asks the server ``REDIS_URL`` names whether it is a cluster node
(``INFO cluster``); on a cluster the worker gets one ``RedisCluster`` that learns every node
from it (the URL's credentials go to each), and reads without blocking
(``digest_worker.cluster_streams``)."""

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


def connect_cluster(url: str, socket_timeout_s: float) -> aioredis.RedisCluster:
    """A RESP2 ``RedisCluster`` with the same raw replies and packing as ``connect``."""
    client = aioredis.RedisCluster.from_url(
        url, protocol=2, socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
    )
    manager = client.nodes_manager
    base = manager.connection_kwargs.get("connection_class") or aioredis.Connection
    packing = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})
    # Nodes learned later are built from these kwargs; the seed nodes exist already.
    manager.connection_kwargs["connection_class"] = packing
    for node in manager.startup_nodes.values():
        node.connection_class = packing
    for command in RAW_REPLY_COMMANDS:
        client.set_response_callback(command, _raw)
    return client


async def open_clients(url: str, socket_timeout_s: float,
                       ) -> tuple[aioredis.Redis | aioredis.RedisCluster, aioredis.Redis | None]:
    """``(commands, reader)``: on one server a client for short commands and a
    single-connection one for the blocking ``XREADGROUP``; on a cluster one ``RedisCluster``
    and no reader (reads do not block there)."""
    probe = connect(url, socket_timeout_s, single_connection=True)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    if str(info.get("cluster_enabled", "0")) != "1":
        return connect(url, socket_timeout_s), connect(url, socket_timeout_s,
                                                       single_connection=True)
    client = connect_cluster(url, socket_timeout_s)
    try:
        await client.initialize()
    except BaseException:
        await client.aclose()
        raise
    return client, None


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
