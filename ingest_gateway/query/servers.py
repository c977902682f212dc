"""``GET /api/servers`` and ``GET /api/servers/{id}/processes`` (the latest snapshot of a host).

A server is ``stale`` when nothing arrived from it for ``STALE_AFTER_S`` (20 default agent
intervals). The snapshot is the host's newest collection: for OS processes, every process of
that collection with its CPU rate over the previous sample of the same series (``null`` for
a process seen for the first time), for groups the same per group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from ingest_gateway.query.params import bad, parse_choice, parse_int
from ingest_gateway.query.top import MIB, iso

STALE_AFTER_S = 300
# The newest collection is looked for this far before the server's last_seen_at.
SNAPSHOT_LOOKBACK = timedelta(minutes=10)
# rollup_max_rate_gap() of migrations/0002: how far back the previous sample of a rate may be
RATE_GAP = timedelta(seconds=120)
SORT_KEYS = ("cpu", "memory", "pid", "name")
ORDERS = ("asc", "desc")
MAX_SNAPSHOT_LIMIT = 5000


@dataclass(frozen=True)
class SnapshotParams:
    """Parameters of the snapshot endpoint: ``sort`` cpu|memory|pid|name, ``order``."""

    server_id: str
    sort: str = "cpu"
    order: str = "desc"
    limit: int = 200
    source: str | None = None


def parse_snapshot(server_id: str, query: Mapping[str, str]) -> SnapshotParams:
    if not server_id or len(server_id) > 128:
        raise bad("server_id", "must have 1 to 128 characters", server_id)
    sort = parse_choice(query, "sort", SORT_KEYS, "cpu") or "cpu"
    default_order = "desc" if sort in ("cpu", "memory") else "asc"
    return SnapshotParams(
        server_id=server_id, sort=sort,
        order=parse_choice(query, "order", ORDERS, default_order) or default_order,
        limit=parse_int(query, "limit", 1, MAX_SNAPSHOT_LIMIT, 200) or 200,
        source=parse_choice(query, "source", ("groups", "processes"), None),
    )


async def list_servers(conn: asyncpg.Connection, now: datetime) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT server_id, hostname, os_type, os_version, agent_version, first_seen_at, "
        "last_seen_at FROM servers ORDER BY server_id")
    stale_before = now - timedelta(seconds=STALE_AFTER_S)
    return {"stale_after_s": STALE_AFTER_S, "servers": [{
        "server_id": r["server_id"], "hostname": r["hostname"], "os_type": r["os_type"],
        "os_version": r["os_version"], "agent_version": r["agent_version"],
        "first_seen_at": iso(r["first_seen_at"]), "last_seen_at": iso(r["last_seen_at"]),
        "stale": r["last_seen_at"] < stale_before,
    } for r in rows]}


# The samples of one host around its last report: hot rows and compacted history alike
# (migrations 0004/0005), found from the host's identities, read once per (key, ts). The
# index on the identities is (server_id, last_seen_hour) (migrations/0007).
_POINTS_SQL = """
    SELECT p.* FROM {ids} i JOIN {hot} p ON p.key = i.key
    WHERE i.server_id = $1 AND i.last_seen >= $4 AND p.ts >= $4 AND p.ts <= $2
      AND i.last_seen_hour >= date_bin('1 hour', $4, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    UNION ALL
    SELECT h.* FROM {decode}($4, $2 + interval '1 microsecond', ARRAY[$1]) h
    WHERE h.ts >= $4 AND h.ts <= $2
      AND NOT EXISTS (SELECT 1 FROM {hot} x WHERE x.key = h.key AND x.ts = h.ts)
"""

_PROCESSES_SQL = """
WITH pts AS MATERIALIZED ({points}),
latest AS (SELECT max(ts) AS ts FROM pts WHERE ts >= $2::timestamptz - $3::interval)
SELECT i.pid, i.ppid, i.username, i.name, i.command, s.state, i.start_time, s.ts,
       s.cpu_seconds_total, s.memory_percent, s.rss_bytes, s.vsz_bytes,
       (SELECT CASE WHEN s.ts - p.ts <= rollup_max_rate_gap() THEN
                   CASE WHEN s.cpu_seconds_total >= p.cpu_seconds_total
                        THEN s.cpu_seconds_total - p.cpu_seconds_total
                        ELSE s.cpu_seconds_total END
                   / extract(epoch FROM s.ts - p.ts) END
        FROM pts p
        WHERE p.key = s.key AND p.ts < s.ts AND p.ts >= s.ts - rollup_max_rate_gap()
        ORDER BY p.ts DESC LIMIT 1) AS cores
FROM pts s JOIN latest ON s.ts = latest.ts JOIN process_identities i ON i.key = s.key
""".format(points=_POINTS_SQL.format(ids="process_identities", hot="process_points",
                                     decode="process_history_points"))

_GROUPS_SQL = """
WITH pts AS MATERIALIZED ({points}),
latest AS (SELECT max(ts) AS ts FROM pts WHERE ts >= $2::timestamptz - $3::interval)
SELECT g.name, s.num_procs, s.ts, s.memory_resident_bytes AS rss_bytes,
       s.cpu_user_seconds_total + s.cpu_system_seconds_total AS cpu_seconds_total,
       (SELECT CASE WHEN s.ts - p.ts <= rollup_max_rate_gap() THEN
                   CASE WHEN s.cpu_user_seconds_total + s.cpu_system_seconds_total
                             >= p.cpu_user_seconds_total + p.cpu_system_seconds_total
                        THEN s.cpu_user_seconds_total + s.cpu_system_seconds_total
                             - p.cpu_user_seconds_total - p.cpu_system_seconds_total
                        ELSE s.cpu_user_seconds_total + s.cpu_system_seconds_total END
                   / extract(epoch FROM s.ts - p.ts) END
        FROM pts p
        WHERE p.key = s.key AND p.ts < s.ts AND p.ts >= s.ts - rollup_max_rate_gap()
        ORDER BY p.ts DESC LIMIT 1) AS cores
FROM pts s JOIN latest ON s.ts = latest.ts JOIN process_groups g ON g.key = s.key
""".format(points=_POINTS_SQL.format(ids="process_groups", hot="process_group_points",
                                     decode="process_group_history_points"))


async def host_snapshot(conn: asyncpg.Connection, params: SnapshotParams) -> dict[str, Any] | None:
    """The newest collection of one host, sorted; None when the server is unknown."""
    last_seen = await conn.fetchval(
        "SELECT last_seen_at FROM servers WHERE server_id = $1", params.server_id)
    if last_seen is None:
        return None
    sources = [params.source] if params.source else ["processes", "groups"]
    rows: list[asyncpg.Record] = []
    source = sources[0]
    for source in sources:
        sql = _PROCESSES_SQL if source == "processes" else _GROUPS_SQL
        rows = await conn.fetch(sql, params.server_id, last_seen, SNAPSHOT_LOOKBACK,
                                last_seen - SNAPSHOT_LOOKBACK - RATE_GAP)
        if rows:
            break
    items = [_item(row, source) for row in rows]
    items.sort(key=_sort_key(params.sort), reverse=params.order == "desc")
    return {
        "server_id": params.server_id,
        "source": source,
        "ts": iso(rows[0]["ts"]) if rows else None,
        "sort": params.sort,
        "order": params.order,
        "total": len(items),
        "processes": items[:params.limit],
    }


def _item(row: asyncpg.Record, source: str) -> dict[str, Any]:
    cores = row["cores"]
    item: dict[str, Any] = {
        "name": row["name"],
        "cpu_percent": round(100 * cores, 3) if cores is not None else None,
        "cpu_seconds_total": row["cpu_seconds_total"],
        "memory_mb": round(row["rss_bytes"] / MIB, 3) if row["rss_bytes"] is not None else None,
    }
    if source == "groups":
        item["num_procs"] = row["num_procs"]
        return item
    start_time = row["start_time"]
    item.update({
        "pid": row["pid"], "ppid": row["ppid"], "user": row["username"],
        "command": row["command"], "state": row["state"],
        "start_time": iso(start_time) if start_time.timestamp() > 0 else None,
        "memory_percent": row["memory_percent"],
        "vsz_mb": round(row["vsz_bytes"] / MIB, 3) if row["vsz_bytes"] is not None else None,
    })
    return item


def _sort_key(sort: str):
    if sort == "name":
        return lambda item: (item["name"], item.get("pid") or 0)
    if sort == "pid":
        return lambda item: (item.get("pid") or 0, item["name"])
    field = "cpu_percent" if sort == "cpu" else "memory_mb"
    # None (no rate yet) sorts as the smallest value, in either order.
    return lambda item: (item[field] is not None, item[field] or 0.0, item["name"])
