"""The consumer we started from, as a long-running process: the baseline of bench_fleet.py.

``XREADGROUP COUNT 10`` over the shards, then one ``INSERT ... ON CONFLICT DO NOTHING`` per
message in one transaction per stream read, then ``XACK`` — the shape of the system procfleet
replaced (bench/bench_writer.py measures the same loop on a pre-filled stream). It runs until
SIGTERM; the digest workers' engineering (batches of thousands, COPY, pipelined stages) is
what bench_fleet.py compares against it.

    python bench/fleet_naive.py REDIS_URL DATABASE_URL CONSUMER_NAME [SHARDS]
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from digest_worker.rows import TABLE_COLUMNS, TABLE_OF_KIND  # noqa: E402
from digest_worker.timestamps import UNKNOWN_START_TIME, install_codec  # noqa: E402
from ingest_gateway import stream  # noqa: E402

READ_COUNT = 10
BLOCK_MS = 1000

INSERTS = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
           f"({', '.join(f'${i}' for i in range(1, len(cols) + 1))}) ON CONFLICT DO NOTHING"
    for table, cols in TABLE_COLUMNS.items()
}
UPSERT_SERVER = (
    "INSERT INTO servers (server_id, hostname, first_seen_at, last_seen_at) "
    "VALUES ($1, $2, $3, $3) ON CONFLICT (server_id) DO UPDATE SET "
    "last_seen_at = greatest(servers.last_seen_at, EXCLUDED.last_seen_at)")


async def consume(redis_url: str, database_url: str, consumer: str, shards: int) -> int:
    """Read, insert row by row, acknowledge, until SIGTERM; returns the messages handled."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    client = Redis.from_url(redis_url, protocol=2, socket_timeout=BLOCK_MS / 1000 + 10)
    conn = await asyncpg.connect(database_url)
    await install_codec(conn)
    keys = [stream.sample_stream(n) for n in range(shards)]
    done = 0
    try:
        while not stopping.is_set():
            reply = await client.execute_command(
                "XREADGROUP", "GROUP", stream.GROUP, consumer, "COUNT", READ_COUNT,
                "BLOCK", BLOCK_MS, "STREAMS", *keys, *[">"] * shards)
            for key, items in reply or []:
                async with conn.transaction():
                    for _entry_id, fields in items:
                        if not isinstance(fields, dict):  # a raw flat reply
                            fields = dict(zip(fields[::2], fields[1::2], strict=True))
                        kind, row = stream.decode(fields)
                        if kind == stream.KIND_HOST:
                            await conn.execute(UPSERT_SERVER, row[0], row[3], row[1])
                            continue
                        if kind == stream.KIND_PROCESS and row[3] is None:
                            row = (*row[:3], UNKNOWN_START_TIME, *row[4:])
                        await conn.execute(INSERTS[TABLE_OF_KIND[kind]], *row)
                await client.xack(key, stream.GROUP, *[entry_id for entry_id, _ in items])
                done += len(items)
    finally:
        await conn.close()
        await client.aclose()
    return done


if __name__ == "__main__":
    redis_url, database_url, consumer = sys.argv[1:4]
    shards = int(sys.argv[4]) if len(sys.argv) > 4 else stream.DEFAULT_SHARDS
    handled = asyncio.run(consume(redis_url, database_url, consumer, shards))
    print(f"naive consumer {consumer} stopped messages={handled}", flush=True)
