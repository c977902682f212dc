"""Redis Cluster / Valkey cluster for the enqueue fast path: the slot map and a pool per node.

``REDIS_URL`` may name any node of a cluster: ``is_cluster`` asks it (``INFO cluster``), and
``ClusterRouter`` learns the rest from ``CLUSTER SLOTS`` — every master and replica becomes a
node it can ask again, so the gateway keeps working when the node it was given dies. Each
node gets its own ``RespPool`` with the URL's credentials and TLS settings (only the address
changes), so a password in ``REDIS_URL`` reaches every node.

The map is refreshed when a node answers ``MOVED`` (a slot changed hands for good) or cannot
be reached (a master died and a replica is being promoted), at most once per
``MIN_REFRESH_INTERVAL_S``; an ``ASK`` is followed for the one command without a refresh (a
slot is being migrated).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from agent.errors import ConfigError
from ingest_gateway.ingest.resp import (
    ConnectParams,
    RespConnection,
    RespConnectionError,
    RespPool,
    pack_command,
)

log = logging.getLogger(__name__)

MIN_REFRESH_INTERVAL_S = 0.25
Address = tuple[str, int]


async def is_cluster(redis: Redis) -> bool:
    """True when the server ``redis`` talks to is a node of a cluster (``cluster_enabled:1``)."""
    info = await redis.info("cluster")
    return str(info.get("cluster_enabled", "0")) == "1"


async def open_client(url: str, timeout_s: float) -> Redis | RedisCluster:
    """A RESP2 client for ``url``: a ``Redis`` on a single server, a ``RedisCluster`` (which
    learns every node, the URL's credentials going to each) when the URL names a cluster
    node. For the commands that name one key each: tokens, the shard count, groups."""
    seed = Redis.from_url(url, protocol=2, socket_timeout=timeout_s,
                          socket_connect_timeout=timeout_s)
    try:
        clustered = await is_cluster(seed)
    except BaseException:
        await seed.aclose()
        raise
    if not clustered:
        return seed
    await seed.aclose()
    client = RedisCluster.from_url(url, protocol=2, socket_timeout=timeout_s,
                                   socket_connect_timeout=timeout_s)
    try:
        await client.initialize()
    except BaseException:
        await client.aclose()
        raise
    return client


def slot_of(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


def parse_redirect(error: Exception) -> tuple[str, int, Address] | None:
    """``("MOVED" | "ASK", slot, (host, port))`` of a redirection error reply, else None."""
    parts = str(error).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return parts[0], int(parts[1]), (host, int(port))


def parse_slots(reply: list) -> tuple[dict[int, Address], set[Address]]:
    """A ``CLUSTER SLOTS`` reply as (slot → master address, every node's address)."""
    owners: dict[int, Address] = {}
    nodes: set[Address] = set()
    for first, last, master, *replicas in reply:
        address = _address(master)
        for slot in range(int(first), int(last) + 1):
            owners[slot] = address
        nodes.add(address)
        nodes.update(_address(replica) for replica in replicas)
    return owners, nodes


def _address(node: list) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return host, int(node[1])


class ClusterRouter:
    """The slot map of a cluster and a ``RespPool`` per master, created on first use."""

    def __init__(self, params: ConnectParams, *, pool_size: int, timeout_s: float) -> None:
        if params.path:
            raise ConfigError("REDIS_URL", params.path, "a cluster is reached over TCP, "
                              "not a unix socket")
        if params.db:
            raise ConfigError("REDIS_URL", params.db, "a cluster has database 0 only")
        self.params, self.pool_size, self.timeout_s = params, pool_size, timeout_s
        assert params.host is not None
        self.known: list[Address] = [(params.host, params.port)]
        self._owners: dict[int, Address] = {}
        self._pools: dict[Address, RespPool] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh_s = float("-inf")
        self.refreshes = 0

    @staticmethod
    def slot_of_key(key: str) -> int:
        return slot_of(key)

    def owner(self, slot: int) -> Address:
        """The master serving ``slot`` as far as we know (the seed if the map has no owner)."""
        return self._owners.get(slot) or self.known[0]

    def pool(self, address: Address) -> RespPool:
        pool = self._pools.get(address)
        if pool is None:
            params = dataclasses.replace(self.params, host=address[0], port=address[1])
            pool = self._pools[address] = RespPool(params, size=self.pool_size,
                                                   timeout_s=self.timeout_s)
        return pool

    def pool_for_slot(self, slot: int) -> RespPool:
        return self.pool(self.owner(slot))

    def masters(self) -> set[Address]:
        return set(self._owners.values())

    async def refresh(self) -> None:
        """Ask the known nodes in turn for ``CLUSTER SLOTS``; concurrent callers share one
        refresh, and refreshes are at least ``MIN_REFRESH_INTERVAL_S`` apart."""
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.create_task(self._refresh(), name="cluster-slots")
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        since_s = asyncio.get_running_loop().time() - self._last_refresh_s
        if since_s < MIN_REFRESH_INTERVAL_S:
            await asyncio.sleep(MIN_REFRESH_INTERVAL_S - since_s)
        errors: list[str] = []
        for address in list(self.known):
            try:
                reply = await self._ask_slots(address)
            except (ConnectionError, OSError, TimeoutError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc or type(exc).__name__}")
                continue
            owners, nodes = parse_slots(reply)
            if not owners:
                errors.append(f"{address[0]}:{address[1]}: no slot served")
                continue
            self._owners = owners
            # The node that answered first next time; keep the others, a dead one may return.
            self.known = [address, *sorted(nodes - {address}),
                          *[a for a in self.known if a not in nodes and a != address]]
            self._last_refresh_s = asyncio.get_running_loop().time()
            self.refreshes += 1
            log.info("cluster slot map", extra={"kv": {
                "masters": len(self.masters()), "nodes": len(nodes), "from": f"{address[0]}:"
                f"{address[1]}"}})
            return
        raise RespConnectionError("no cluster node answers CLUSTER SLOTS: " + "; ".join(errors))

    async def _ask_slots(self, address: Address) -> list:
        async with self.pool(address).connection() as conn:
            (reply,) = await conn.roundtrip(pack_command("CLUSTER", "SLOTS"), 1, self.timeout_s)
        if isinstance(reply, Exception):
            raise RespConnectionError(f"CLUSTER SLOTS refused: {reply}")
        return reply

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED`` reply: the slot is served by ``address`` now; other slots may have
        moved too, so the whole map is refreshed in the background."""
        self._owners[slot] = address
        self.note_failure()

    def note_failure(self) -> None:
        """A node failed or redirected us: refresh the map in the background."""
        if self._refreshing is None or self._refreshing.done():
            task = asyncio.ensure_future(self.refresh())
            task.add_done_callback(_log_refresh_error)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        for pool in self._pools.values():
            await pool.close()

    def pools(self) -> Iterable[RespPool]:
        return self._pools.values()


def _log_refresh_error(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster slot map refresh failed",
                    extra={"kv": {"error": str(task.exception())}})


async def roundtrip_on(pool: RespPool, data: bytes, n_replies: int, timeout_s: float) -> list:
    """One round trip on a connection of ``pool``."""
    conn: RespConnection
    async with pool.connection() as conn:
        return await conn.roundtrip(data, n_replies, timeout_s)
