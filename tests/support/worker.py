"""Worker-test helpers: stream messages as the gateway enqueues them, producing them into the
shards, a burst worker, and what landed (table counts, stream state)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from digest_worker.settings import WorkerSettings
from digest_worker.worker import Worker
from ingest_gateway import stream

SHARDS = 4


def report_messages(server_id: str, ts: float, processes: int = 5, groups: int = 2,
                    report_id: str | None = None) -> list[tuple[str, tuple]]:
    """The messages of one report, as the gateway would enqueue them."""
    out: list[tuple[str, tuple]] = [
        ("h", (server_id, ts, report_id or f"rep-{server_id}-{int(ts * 1000)}",
               f"{server_id}.example", "linux", "6.8.0", "boot-1", "0.1.0")),
        ("s", (server_id, ts, "ps", f"{int(ts * 1000):064x}", processes, 0, "PID CMD\n")),
    ]
    out += [("g", (server_id, ts, f"group-{g}", 2, 10.0 + ts % 100, 1.0, 1_000_000, None,
                   None, 4, 10, None, None, None, None, None, None, ts - 3600))
            for g in range(groups)]
    out += [("p", (server_id, ts, 100 + j, ts - 86400 + j, 1, "root", f"proc-{j}",
                   f"/usr/bin/proc-{j} --flag", "S", 1.5 + j, 0.1, 0.2, 4096 * j, 8192 * j,
                   None, None, None))
            for j in range(processes)]
    return out


async def produce(client: aioredis.Redis, messages: list[tuple[str, tuple]]) -> list[bytes]:
    """XADD ``messages`` to their shards (as the gateway does); return the entry ids."""
    pipe = client.pipeline(transaction=False)
    for kind, row in messages:
        pipe.xadd(stream.sample_stream(stream.shard_for(row[0], SHARDS)),
                  stream.encode(kind, row))
    return await pipe.execute()


async def produce_raw(client: aioredis.Redis, server_id: str, fields: dict) -> bytes:
    """XADD arbitrary fields to the shard of ``server_id`` (poison entries)."""
    return await client.xadd(stream.sample_stream(stream.shard_for(server_id, SHARDS)), fields)


async def table_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {table: await conn.fetchval(f"SELECT count(*) FROM {table}")
                for table in ("servers", "snapshots", "process_group_samples",
                              "process_samples")}
    finally:
        await conn.close()


def expected_counts(messages: list[tuple[str, tuple]]) -> dict[str, int]:
    kinds = {"s": "snapshots", "g": "process_group_samples", "p": "process_samples"}
    counts = dict.fromkeys(kinds.values(), 0)
    counts["servers"] = len({row[0] for _, row in messages})
    for kind, _row in {(k, r[:4]) for k, r in messages}:
        if kind in kinds:
            counts[kinds[kind]] += 1
    return counts


async def stream_state(client: aioredis.Redis) -> dict[str, int]:
    """Entries left in the sample streams and pending in the group, in total."""
    length = pending = 0
    for shard in range(SHARDS):
        key = stream.sample_stream(shard)
        length += await client.xlen(key)
        if await client.exists(key):
            with contextlib.suppress(aioredis.ResponseError):  # no group on this shard
                pending += (await client.xpending(key, stream.GROUP))["pending"]
    return {"length": length, "pending": pending}


async def age_pending(client, idle_ms: int, shards: int = SHARDS) -> int:
    """Make every pending entry look idle for ``idle_ms`` (``XCLAIM … IDLE``, to the consumer
    that holds it, ``JUSTID`` so its delivery count stays): instead of sleeping until entries
    are old enough to be claimed. Returns how many entries it aged."""
    aged = 0
    for shard in range(shards):
        key = stream.sample_stream(shard)
        with contextlib.suppress(aioredis.ResponseError):  # no group on this shard
            for entry in await client.xpending_range(key, stream.GROUP, "-", "+", 100_000):
                await client.xclaim(key, stream.GROUP, entry["consumer"], 0,
                                    [entry["message_id"]], idle=idle_ms, justid=True)
                aged += 1
    return aged


async def run_burst(settings: WorkerSettings, **changes: Any) -> Worker:
    """Run a burst worker to the end; return it (summary, metrics)."""
    worker = Worker(settings.with_overrides(**changes) if changes else settings)
    await asyncio.wait_for(worker.run(), 120)
    return worker


def forge_keys(monkeypatch, forged: dict[tuple, int]) -> None:
    """Make build_rows derive the keys ``forged`` ((server_id, pid, start_time) -> key) for
    those processes: md5 collisions do not come by chance."""
    from digest_worker import rows

    real = rows.process_key
    monkeypatch.setattr(rows, "process_key", lambda *identity: (
        forged[identity] if identity in forged else real(*identity)))
