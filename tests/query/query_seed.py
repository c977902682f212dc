"""Builders of sample rows with known answers, and their insertion (straight into the tables
with asyncpg COPY, as the digest workers would leave them)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg

GROUP_COLUMNS = ("server_id", "ts", "name", "num_procs", "cpu_user_seconds_total",
                 "cpu_system_seconds_total", "memory_resident_bytes")
PROCESS_COLUMNS = ("server_id", "ts", "pid", "start_time", "name", "command",
                   "cpu_seconds_total", "rss_bytes", "username", "state", "ppid")
MIB = 1024 * 1024
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def base_time() -> datetime:
    """A whole hour about a day ago: inside the rollup's backfill, away from 'now'."""
    moment = datetime.now(UTC) - timedelta(hours=26)
    return moment.replace(minute=0, second=0, microsecond=0)


def steady_group(server_id: str, name: str, start: datetime, minutes: float, *,
                 cores: float = 0.5, memory_mb: float = 100.0, num_procs: int = 2,
                 interval_s: float = 15.0, counter_start: float = 1000.0,
                 skip: tuple[datetime, datetime] | None = None) -> list[dict]:
    """Samples of one group using ``cores`` steadily (user 80 %, system 20 %)."""
    rows = []
    count = int(minutes * 60 // interval_s) + 1
    for i in range(count):
        ts = start + timedelta(seconds=i * interval_s)
        if skip and skip[0] <= ts < skip[1]:
            continue
        total = counter_start + cores * i * interval_s
        rows.append({"server_id": server_id, "ts": ts, "name": name, "num_procs": num_procs,
                     "cpu_user_seconds_total": total * 0.8,
                     "cpu_system_seconds_total": total * 0.2,
                     "memory_resident_bytes": int(memory_mb * MIB)})
    return rows


def steady_process(server_id: str, name: str, pid: int, start: datetime, minutes: float, *,
                   cores: float = 0.25, rss_mb: float = 50.0, interval_s: float = 15.0,
                   start_time: datetime | None = None, counter_start: float = 100.0
                   ) -> list[dict]:
    """Samples of one OS process; ``start_time`` None = long-running (started a day ago)."""
    started = start_time or start - timedelta(days=1)
    rows = []
    count = int(minutes * 60 // interval_s) + 1
    for i in range(count):
        ts = start + timedelta(seconds=i * interval_s)
        rows.append({"server_id": server_id, "ts": ts, "pid": pid, "start_time": started,
                     "name": name, "command": f"/usr/bin/{name}",
                     "cpu_seconds_total": counter_start + cores * i * interval_s,
                     "rss_bytes": int(rss_mb * MIB), "username": "app", "state": "S",
                     "ppid": 1})
    return rows


async def insert_groups(conn: asyncpg.Connection, rows: Iterable[dict]) -> None:
    """The rows, and their servers' rows as the digest writer upserts them with every batch."""
    rows = list(rows)
    records = [tuple(r[c] for c in GROUP_COLUMNS) for r in rows]
    await conn.copy_records_to_table("process_group_samples", records=records,
                                     columns=list(GROUP_COLUMNS))
    await _upsert_servers(conn, rows)


async def insert_processes(conn: asyncpg.Connection, rows: Iterable[dict]) -> None:
    rows = list(rows)
    records = [tuple(r.get(c) for c in PROCESS_COLUMNS) for r in rows]
    await conn.copy_records_to_table("process_samples", records=records,
                                     columns=list(PROCESS_COLUMNS))
    await _upsert_servers(conn, rows)


async def _upsert_servers(conn: asyncpg.Connection, rows: list[dict]) -> None:
    seen: dict[str, tuple[datetime, datetime]] = {}
    for r in rows:
        first, last = seen.get(r["server_id"], (r["ts"], r["ts"]))
        seen[r["server_id"]] = (min(first, r["ts"]), max(last, r["ts"]))
    await conn.executemany(
        "INSERT INTO servers (server_id, first_seen_at, last_seen_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (server_id) DO UPDATE SET "
        "first_seen_at = LEAST(servers.first_seen_at, EXCLUDED.first_seen_at), "
        "last_seen_at = GREATEST(servers.last_seen_at, EXCLUDED.last_seen_at)",
        [(sid, first, last) for sid, (first, last) in seen.items()])


async def insert_servers(conn: asyncpg.Connection, server_ids: Iterable[str],
                         last_seen_at: datetime, first_seen_at: datetime | None = None) -> None:
    await conn.executemany(
        "INSERT INTO servers (server_id, hostname, os_type, os_version, agent_version, "
        "first_seen_at, last_seen_at) VALUES ($1, $1 || '.example', 'linux', '6.8', '0.1.0', "
        "$2, $3) ON CONFLICT (server_id) DO UPDATE SET hostname = EXCLUDED.hostname, "
        "os_type = EXCLUDED.os_type, os_version = EXCLUDED.os_version, "
        "agent_version = EXCLUDED.agent_version, last_seen_at = EXCLUDED.last_seen_at",
        [(sid, first_seen_at or last_seen_at - timedelta(days=1), last_seen_at)
         for sid in server_ids])
