"""The consumer side of the stream contract on a Redis Cluster / Valkey cluster.

On a cluster no command may name keys of two slots, and every shard is its own slot (its
``{N}`` hash tag), so ``GroupConsumer``'s one ``XREADGROUP`` over every shard and its one
``MULTI`` per batch become:

- reads: one ``XREADGROUP`` per shard, pipelined (redis-py's cluster pipeline sends each
  master its shards' commands in one round trip, the masters in parallel). They do not block:
  blocking on N slots would take N connections and a cancelled blocking read costs its
  connection. An empty read waits ``POLL_INTERVAL_MS`` and reads again, until ``block_ms``;
  under load a read always returns entries, so the wait only costs an idle worker a few round
  trips a second;
- settling: one ``MULTI`` per shard (dead letters, ``XACK``, the trim script: keys of one
  slot), the shards in parallel, then one pipelined ``XLEN`` per shard. A retry after some
  shards failed settles only the others, so no entry is dead-lettered twice.

Claims (``XAUTOCLAIM``), ``XPENDING`` and ``XCLAIM`` name one stream each and work unchanged.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from digest_worker.streams import TRIM_ACKNOWLEDGED, Entry, GroupConsumer, _ids_by_shard
from ingest_gateway import stream

POLL_INTERVAL_MS = 50


class ClusterGroupConsumer(GroupConsumer):
    """A ``GroupConsumer`` whose commands each touch one slot (one shard)."""

    def __init__(self, commands: aioredis.RedisCluster, consumer: str, shards: int,
                 dead_letter_maxlen: int = 100_000,
                 poll_interval_ms: int = POLL_INTERVAL_MS) -> None:
        super().__init__(commands, commands, consumer, shards, dead_letter_maxlen)
        self.poll_interval_ms = poll_interval_ms
        # Shards already settled of a batch whose settle failed part-way, by the id of its
        # first entry (alive, so not reused, until the batch is settled and this is dropped).
        self._settled: dict[int, set[int]] = {}

    async def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries (``>``) from every shard; polls up to ``block_ms`` (None: once)."""
        deadline_s = time.monotonic() + (block_ms or 0) / 1000
        while True:
            entries = await self._read_shards({n: ">" for n in range(self.shards)}, count)
            left_s = deadline_s - time.monotonic()
            if entries or block_ms is None or left_s <= 0:
                return entries
            await asyncio.sleep(min(self.poll_interval_ms / 1000, left_s))

    async def read_own_pending(self, count: int) -> list[Entry]:
        """Every entry already delivered to this consumer and not acknowledged (id ``0``)."""
        entries: list[Entry] = []
        last: dict[int, Any] = {n: "0" for n in range(self.shards)}
        while last:
            got = await self._read_shards(last, count)
            done = set(last) - {entry.shard for entry in got}
            for entry in got:
                last[entry.shard] = entry.entry_id
            for shard in done:
                del last[shard]
            entries += got
        return await self.fill_deliveries(entries)

    async def settle(self, entries: list[Entry], dead: list[tuple[Entry, str]]) -> int:
        """``GroupConsumer.settle`` with one transaction per shard; called again with the same
        batch after a failure, it settles only the shards that failed."""
        by_shard = _ids_by_shard(entries)
        dead_by_shard: dict[int, list[tuple[Entry, str]]] = {}
        for entry, reason in dead:
            dead_by_shard.setdefault(entry.shard, []).append((entry, reason))
        batch_key = id(entries[0]) if entries else 0
        done = self._settled.setdefault(batch_key, set())

        async def settle_shard(shard: int, ids: list[bytes]) -> None:
            await self._settle_shard(shard, ids, dead_by_shard.get(shard, []))
            done.add(shard)

        # Every shard's outcome is known before a failure is raised: a retry must not start
        # while a shard's transaction is still on its way.
        outcomes = await asyncio.gather(*(settle_shard(shard, ids)
                                          for shard, ids in by_shard.items()
                                          if shard not in done), return_exceptions=True)
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if errors:
            raise errors[0]
        del self._settled[batch_key]
        pipe = self.commands.pipeline(transaction=False)
        for key in self.keys:
            pipe.execute_command("XLEN", key)
        return sum(await pipe.execute())

    async def _settle_shard(self, shard: int, ids: list[bytes],
                            dead: list[tuple[Entry, str]]) -> None:
        key = self.keys[shard]
        pipe = self.commands.pipeline(transaction=True)
        for entry, reason in dead:
            pipe.execute_command(
                "XADD", stream.dead_letter_stream(shard),
                "MAXLEN", "~", self.dead_letter_maxlen, "*",
                *(entry.fields or []),
                b"original_id", entry.entry_id, b"reason", reason,
                b"deliveries", entry.deliveries, b"consumer", self.consumer,
            )
        pipe.execute_command("XACK", key, self.group, *ids)
        pipe.execute_command("EVAL", TRIM_ACKNOWLEDGED, 1, key, self.group)
        await pipe.execute()

    async def _read_shards(self, ids: dict[int, Any], count: int) -> list[Entry]:
        pipe = self.commands.pipeline(transaction=False)
        for shard, last_id in ids.items():
            pipe.execute_command("XREADGROUP", "GROUP", self.group, self.consumer,
                                 "COUNT", count, "STREAMS", self.keys[shard], last_id)
        entries: list[Entry] = []
        for reply in await pipe.execute():
            entries += self._entries(reply)
        return entries
