"""The worker's side of the stream contract: consumer group, reads, claims, acks, dead letters.

Keys, the group name and the message format come from ``ingest_gateway.stream``; this module
only knows how a consumer uses them:

- join the group on every shard (``XGROUP CREATE … 0 MKSTREAM``; id 0 so a recreated group
  re-reads whatever is still in the stream, i.e. everything not yet acknowledged);
- read this consumer's own pending entries (id ``0``) before new ones (``>``);
- claim the stalled entries of dead consumers (``XAUTOCLAIM``), with their delivery counts;
- settle a batch in one ``MULTI``: dead letters (``XADD``), ``XACK``, then a script that trims
  exactly what the group has acknowledged (``XTRIM MINID`` up to its oldest pending entry;
  never ``MAXLEN``, which would drop unread entries), then ``XLEN``.

Clients come from ``digest_worker.redis_client`` (RESP2, raw replies for these commands); the
blocking read has its own connection.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from digest_worker import redis_client
from ingest_gateway import stream

log = logging.getLogger(__name__)

# A consumer with nothing pending, unseen for this long, belonged to a worker that is gone.
FORGET_CONSUMER_AFTER_MS = 3_600_000

# Deletes the entries of a stream that group ARGV[1] has acknowledged: those below its oldest
# pending entry, or, with nothing pending, up to its last delivered id. XTRIM MINID frees whole
# listpack nodes and costs ~10x less Redis CPU than XDEL of each id; as a script it cannot
# race a read or an ack of another worker. (The digest group is the only group: another group
# would need its own floor here.)
TRIM_ACKNOWLEDGED = """
local floor = nil
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last = nil, nil
    for i = 1, #group, 2 do
        if group[i] == 'name' then name = group[i + 1] end
        if group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
    if name == ARGV[1] then floor = last end
end
if not floor then return 0 end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 then
    floor = pending[2]
else
    local ms, seq = string.match(floor, '^(%d+)-(%d+)$')
    floor = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
"""

class Entry:
    """One stream entry held by this consumer. ``fields`` is the flat field/value list as
    Redis sent it (``None`` when the entry was deleted while pending)."""

    __slots__ = ("shard", "entry_id", "fields", "deliveries")

    def __init__(self, shard: int, entry_id: bytes, fields: list | None,
                 deliveries: int = 1) -> None:
        self.shard, self.entry_id, self.fields, self.deliveries = (
            shard, entry_id, fields, deliveries)

    def __repr__(self) -> str:
        return f"Entry({self.shard}, {self.entry_id!r}, deliveries={self.deliveries})"


def entry_time_s(entry_id: bytes) -> float:
    """The server time an entry was added (its id is ``<ms>-<seq>``)."""
    return int(entry_id.split(b"-", 1)[0]) / 1000


class GroupConsumer:
    """One consumer of group ``stream.GROUP`` over shards ``0 .. shards-1``.

    ``commands`` serves short commands; ``reader`` is used only for ``XREADGROUP`` so a
    blocking read never holds up an acknowledgement."""

    def __init__(self, commands: aioredis.Redis, reader: aioredis.Redis, consumer: str,
                 shards: int, dead_letter_maxlen: int = 100_000) -> None:
        self.commands, self.reader, self.consumer = commands, reader, consumer
        self.group = stream.GROUP
        self.dead_letter_maxlen = dead_letter_maxlen
        self._claim_cursor: dict[int, bytes] = {}
        self.set_shards(shards)

    def set_shards(self, shards: int) -> None:
        self.shards = shards
        self.keys = [stream.sample_stream(n) for n in range(shards)]
        self._shard_of = {key.encode(): n for n, key in enumerate(self.keys)}

    async def ensure_groups(self) -> list[int]:
        """Create the group on every shard that lacks it; return the shards created."""
        created = []
        for shard, key in enumerate(self.keys):
            try:
                await self.commands.xgroup_create(key, self.group, id="0", mkstream=True)
                created.append(shard)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return created

    async def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries (``>``) from every shard; blocks up to ``block_ms`` (None: no block)."""
        return self._entries(await self._xreadgroup([">"] * self.shards, count, block_ms))

    async def read_own_pending(self, count: int) -> list[Entry]:
        """Every entry already delivered to this consumer and not acknowledged (id ``0``)."""
        entries: list[Entry] = []
        last = ["0"] * self.shards
        while True:
            reply = await self._xreadgroup(last, count, None)
            got = self._entries(reply)
            if not got:
                break
            for entry in got:
                last[entry.shard] = entry.entry_id
            entries += got
        return await self.fill_deliveries(entries)

    async def claim_stalled(self, min_idle_ms: int, count: int,
                            in_hand: frozenset[tuple[int, bytes]] = frozenset(),
                            ) -> tuple[list[Entry], bool]:
        """Take over up to ``count`` entries left pending for ``min_idle_ms`` or more (their
        consumer died), with their delivery counts. Entries this worker already holds
        (``in_hand``: (shard, id)) are left out. Also returns whether the scan of the pending
        lists is incomplete (call again soon)."""
        claimed: list[Entry] = []
        more = False
        for shard, key in enumerate(self.keys):
            if len(claimed) >= count:
                more = True
                break
            start = self._claim_cursor.get(shard, b"0-0")
            reply = await self.commands.execute_command(
                "XAUTOCLAIM", key, self.group, self.consumer, min_idle_ms, start,
                "COUNT", count - len(claimed),
            )
            cursor, items = reply[0], reply[1]
            self._claim_cursor[shard] = cursor
            more = more or cursor not in (b"0-0", "0-0")
            claimed += [Entry(shard, entry_id, fields) for entry_id, fields in items
                        if (shard, entry_id) not in in_hand]
        return await self.fill_deliveries(claimed), more

    async def fill_deliveries(self, entries: list[Entry]) -> list[Entry]:
        """Set each entry's delivery count from ``XPENDING``; drop the entries that are no
        longer pending for this consumer (acknowledged meanwhile)."""
        if not entries:
            return entries
        # One exact XPENDING per entry, pipelined: only claimed and re-read entries get here.
        pipe = self.commands.pipeline(transaction=False)
        for entry in entries:
            key = self.keys[entry.shard]
            pipe.execute_command(
                "XPENDING", key, self.group, entry.entry_id, entry.entry_id, 1, self.consumer
            )
        kept = []
        for entry, reply in zip(entries, await pipe.execute(), strict=True):
            if reply:
                entry.deliveries = int(reply[0][3])
                kept.append(entry)
        return kept

    async def keep_claimed(self, entries: list[Entry]) -> None:
        """Reset the idle time of entries this consumer still works on (``XCLAIM … JUSTID``
        does not count a delivery), so nobody claims them during a long database outage."""
        for shard, ids in _ids_by_shard(entries).items():
            await self.commands.execute_command(
                "XCLAIM", self.keys[shard], self.group, self.consumer, 0, *ids, "JUSTID"
            )

    async def settle(self, entries: list[Entry], dead: list[tuple[Entry, str]]) -> int:
        """Dead-letter ``dead``, acknowledge every entry of ``entries`` (the dead ones
        included) and trim what the group has acknowledged, in one transaction. Returns the
        backlog left (sum of XLEN: entries from the oldest one not yet acknowledged)."""
        by_shard = _ids_by_shard(entries)
        pipe = self.commands.pipeline(transaction=True)
        for entry, reason in dead:
            pipe.execute_command(
                "XADD", stream.dead_letter_stream(entry.shard),
                "MAXLEN", "~", self.dead_letter_maxlen, "*",
                *(entry.fields or []),
                b"original_id", entry.entry_id, b"reason", reason,
                b"deliveries", entry.deliveries, b"consumer", self.consumer,
            )
        for shard, ids in by_shard.items():
            pipe.execute_command("XACK", self.keys[shard], self.group, *ids)
        for shard in by_shard:
            pipe.execute_command("EVAL", TRIM_ACKNOWLEDGED, 1, self.keys[shard], self.group)
        for key in self.keys:
            pipe.execute_command("XLEN", key)
        replies = await pipe.execute()
        return sum(replies[-self.shards:])

    async def follow_topology(self, default_shards: int, claim_idle_ms: int) -> None:
        """Periodic upkeep of the group: follow a change of the shard count in Redis (read
        every shard, create the missing groups) and forget consumers gone for good (nothing
        pending, unseen for an hour or 10 claim idles)."""
        shards = await redis_client.shard_count(self.commands, default_shards)
        if shards != self.shards:
            log.info("shard count changed", extra={"kv": {
                "shards": shards, "previous": self.shards}})
            self.set_shards(shards)
            await self.ensure_groups()
        gone = await self.delete_idle_consumers(
            max(FORGET_CONSUMER_AFTER_MS, 10 * claim_idle_ms))
        if gone:
            log.info("removed consumers gone for good", extra={"kv": {"consumers": gone}})

    async def delete_idle_consumers(self, min_idle_ms: int) -> list[str]:
        """Remove the consumers that hold nothing on any shard and were not seen for
        ``min_idle_ms`` (workers gone for good: each worker start adds a consumer name). A
        live worker reads every ``block_ms`` and a stuck one holds pending entries, so neither
        qualifies."""
        seen: dict[str, list[tuple[str, int, int]]] = {}
        for key in self.keys:
            for consumer in await self.commands.xinfo_consumers(key, self.group):
                name = consumer["name"]
                name = name.decode() if isinstance(name, bytes) else name
                seen.setdefault(name, []).append((key, consumer["pending"], consumer["idle"]))
        removed = []
        for name, places in sorted(seen.items()):
            if name == self.consumer or any(pending or idle < min_idle_ms
                                            for _key, pending, idle in places):
                continue
            for key, _pending, _idle in places:
                await self.commands.xgroup_delconsumer(key, self.group, name)
            removed.append(name)
        return removed

    async def stats(self) -> dict[int, dict[str, float]]:
        """Per shard: ``backlog`` (entries not yet acknowledged), ``pending`` (delivered, not
        acknowledged) and ``lag_s`` (age of the oldest entry not acknowledged)."""
        pipe = self.commands.pipeline(transaction=False)
        for key in self.keys:
            pipe.execute_command("XLEN", key)
            pipe.execute_command("XPENDING", key, self.group)
            pipe.execute_command("XRANGE", key, "-", "+", "COUNT", 1)
        replies = await pipe.execute(raise_on_error=False)
        now_s = time.time()
        out = {}
        for shard in range(self.shards):
            length, pending, first = replies[shard * 3: shard * 3 + 3]
            pending_count = pending[0] if isinstance(pending, list) else 0
            lag_s = max(0.0, now_s - entry_time_s(first[0][0])) if isinstance(
                first, list) and first else 0.0
            out[shard] = {"backlog": length if isinstance(length, int) else 0,
                          "pending": pending_count, "lag_s": lag_s}
        return out

    async def _xreadgroup(self, ids: list, count: int, block_ms: int | None) -> Any:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        return await self.reader.execute_command(*args, "STREAMS", *self.keys, *ids)

    def _entries(self, reply: Any) -> list[Entry]:
        if not reply:
            return []
        shard_of = self._shard_of
        entries = []
        for key, items in reply:
            shard = shard_of[key]
            entries += [Entry(shard, entry_id, fields) for entry_id, fields in items]
        return entries


def _ids_by_shard(entries: list[Entry]) -> dict[int, list[bytes]]:
    by_shard: dict[int, list[bytes]] = {}
    for entry in entries:
        by_shard.setdefault(entry.shard, []).append(entry.entry_id)
    return by_shard


def is_missing_group(exc: BaseException) -> bool:
    """The group (or the stream) is gone, e.g. Redis restarted without its data. A read
    blocked on a stream that gets deleted ends with UNBLOCKED (Redis >= 7)."""
    return isinstance(exc, ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED"))


