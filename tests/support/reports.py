"""Report bodies as an agent sends them, and readers of the streams a gateway fills."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from ingest_gateway import stream

_report_numbers = itertools.count()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def report_doc(
    *,
    server_id: str = "web-01",
    processes: int = 3,
    groups: int = 1,
    collected_at: datetime | None = None,
    report_id: str | None = None,
    snapshots: list[dict] | None = None,
) -> dict[str, Any]:
    """A valid report body; keyword arguments shape it."""
    now = collected_at or datetime.now(UTC).replace(microsecond=123456)
    return {
        "report_id": report_id or f"test-report-{next(_report_numbers):06d}",
        "host": {"server_id": server_id, "hostname": f"{server_id}.example",
                 "os_type": "linux", "os_version": "6.8", "agent_version": "0.1.0"},
        "collected_at": iso(now),
        "process_groups": [{
            "name": f"group-{i}", "num_procs": 2, "cpu_user_seconds_total": 10.5 + i,
            "cpu_system_seconds_total": 1.25, "memory_resident_bytes": 1_000_000 + i,
            "oldest_start_time": iso(now - timedelta(hours=2)),
        } for i in range(groups)],
        "processes": [{
            "pid": 100 + i, "ppid": 1, "user": "app", "name": f"proc-{i}",
            "command": f"/usr/bin/proc-{i} --serve", "state": "S",
            "start_time": iso(now - timedelta(minutes=10 + i)),
            "cpu_seconds_total": 3.5 + i, "cpu_percent": 1.5, "memory_percent": 0.5,
            "rss_bytes": 5_000_000 + i, "vsz_bytes": 9_000_000,
        } for i in range(processes)],
        "snapshots": snapshots or [],
    }


async def stream_entries(redis: Redis, shards: int) -> dict[int, list[tuple[str, tuple]]]:
    """Decoded messages per shard (only shards that have any)."""
    found: dict[int, list[tuple[str, tuple]]] = {}
    for shard in range(shards):
        entries = await redis.xrange(stream.sample_stream(shard))
        if entries:
            found[shard] = [stream.decode(fields) for _, fields in entries]
    return found


async def total_messages(redis: Redis, shards: int) -> int:
    return sum([await redis.xlen(stream.sample_stream(s)) for s in range(shards)])
