"""Decoded stream messages → table rows.

A decoded message is ``(kind, row)`` with ``row`` in the order of ``stream.COLUMNS[kind]``.
The worker's connections take timestamps as the stream carries them
(digest_worker/timestamps.py). A snapshot message *is* its table row. A process or group
sample becomes a point (its identity's key, ts and what moves: ``TABLE_COLUMNS``) written to
``TABLE_TARGET`` (migrations/0003), plus its identity, deduplicated per batch
(digest_worker/identity.py writes those). A process without a start time gets the sentinel.

A sighting (a server's first/last seen and metadata time, an identity's first/last seen)
never moves past this worker's clock: a host whose clock runs ahead (the gateway allows
``max_future_s`` of skew) must not keep its ``last_seen_at`` or its processes' ``last_seen`` in
the future, where they would never show stale or gone. The samples keep their ``ts``. An
identity's ``last_seen`` may then lag its newest sample by that skew (600 s by default) plus the
refresh window (identity.py): the raw path's server filter allows 15 minutes
(``process_points_between``, migrations/0003).

Each batch also lists the (server_id, ts) of its points (``late_marks``): the writer marks the
late ones for the rollups itself (migrations/0008), no join with the identities needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from digest_worker.identity import (
    INF,
    IdentityWriter,
    KeyCollisionError,
    group_key,
    process_key,
    same_start,
)
from digest_worker.timestamps import UNKNOWN_START_TIME
from ingest_gateway import stream

# kind -> table (the logical name: metrics and results count rows under it), the table the
# rows really go to, and its columns in the order build_rows makes them.
TABLE_OF_KIND = {
    stream.KIND_PROCESS: "process_samples",
    stream.KIND_GROUP: "process_group_samples",
    stream.KIND_SNAPSHOT: "snapshots",
}
TABLE_TARGET = {"process_samples": "process_points",
                "process_group_samples": "process_group_points", "snapshots": "snapshots"}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "process_samples": ("key", "ts", "cpu_seconds_total", "rss_bytes", "vsz_bytes",
                        "cpu_percent", "memory_percent", "state"),
    "process_group_samples": (
        "key", "ts", "cpu_user_seconds_total", "cpu_system_seconds_total",
        "memory_resident_bytes", "memory_virtual_bytes", "memory_swapped_bytes",
        "read_bytes_total", "write_bytes_total", "major_page_faults_total",
        "minor_page_faults_total", "context_switches_voluntary_total",
        "context_switches_nonvoluntary_total", "oldest_start_time", "num_procs", "num_threads",
        "open_fds"),
    "snapshots": stream.COLUMNS[stream.KIND_SNAPSHOT],
}
SERVER_COLUMNS = (
    "server_id", "hostname", "os_type", "os_version", "boot_id", "agent_version",
    "last_report_id", "metadata_at", "first_seen_at", "last_seen_at",
)


@dataclass
class ServerSighting:
    """What one batch says about one server: when it was seen, and its newest metadata
    (hostname, os_type, os_version, boot_id, agent_version, report_id)."""

    first_seen_at: float
    last_seen_at: float
    metadata: tuple[Any, ...] | None = None
    metadata_at: float | None = None


@dataclass
class TableRows:
    """The rows of one batch, per table, plus one sighting per server."""

    tables: dict[str, list[Sequence[Any]]] = field(
        default_factory=lambda: {table: [] for table in TABLE_COLUMNS}
    )
    servers: dict[str, ServerSighting] = field(default_factory=dict)
    host_messages: int = 0
    # key -> identity row (identity.IDENTITY_COLUMNS / GROUP_COLUMNS), one per batch
    identities: dict[int, list[Any]] = field(default_factory=dict)
    groups: dict[int, list[Any]] = field(default_factory=dict)
    # rollup source -> {(server_id, ts)} of the points: the writer marks the late ones
    # (migrations/0008)
    late_marks: dict[str, set[tuple[str, float]]] = field(
        default_factory=lambda: {"processes": set(), "groups": set()})

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables.values()) + self.host_messages

    def server_rows(self) -> list[tuple[Any, ...]]:
        """Rows for the ``servers`` upsert, in server_id order (a fixed lock order keeps two
        workers updating the same servers from deadlocking)."""
        rows = []
        for server_id in sorted(self.servers):
            seen = self.servers[server_id]
            meta = seen.metadata or (None,) * 6
            rows.append((server_id, *meta, seen.metadata_at, seen.first_seen_at,
                         seen.last_seen_at))
        return rows


def build_rows(messages: list[tuple[str, Sequence[Any]]],
               identities: IdentityWriter | None = None, *,
               clock: Callable[[], float] = time.time) -> TableRows:
    """Table rows of decoded ``messages``. Raises ``TypeError`` on a value that cannot be a
    row here; the database rejects the others (the writer isolates the message either way).
    With ``identities`` (the writer's), keys come from its memo and a sample whose identity
    that writer has written and committed within its refresh window adds no identity row:
    most samples, in steady state. Sighting times (servers, identities) are clamped to
    ``clock()`` (epoch seconds)."""
    if identities is None:
        identities = IdentityWriter()  # a memo for this call only: every identity is due
    process_memo, group_memo = identities.processes, identities.groups
    now_s = clock()
    # Written longer ago than this (last_seen + refresh_s, as the memo holds it): maybe
    # expired since (identity.TRUST_S), write it again.
    stale_s = now_s - identities.trust_s + identities.refresh_s
    out = TableRows()
    tables = out.tables
    by_kind = {kind: tables[table] for kind, table in TABLE_OF_KIND.items()}
    points, group_points = by_kind["p"], by_kind["g"]
    servers = out.servers
    process_marks, group_marks = out.late_marks["processes"], out.late_marks["groups"]
    last_server, seen, by_pid, by_name, process_ts, group_ts = None, None, None, None, None, None
    derived = 0  # memo entries added (IdentityWriter bounds the memo with it)
    for kind, row in messages:
        server_id, ts = row[0], row[1]
        if type(ts) is not float and type(ts) is not int:
            raise TypeError(f"ts must be epoch seconds, got {ts!r}")
        # Consecutive messages mostly come from one report, hence one server.
        if server_id != last_server:
            seen = servers.get(server_id)
            if seen is None:
                if type(server_id) is not str:
                    raise TypeError(f"server_id must be a string, got {server_id!r}")
                seen = servers[server_id] = ServerSighting(INF, -INF)
            by_pid = process_memo.get(server_id)
            if by_pid is None:
                by_pid = process_memo[server_id] = {}
            by_name = group_memo.get(server_id)
            if by_name is None:
                by_name = group_memo[server_id] = {}
            last_server, process_ts, group_ts = server_id, None, None
        seen_s = ts if ts <= now_s else now_s
        if kind == "p":
            # The hot path, inline (a call per row is measurable): the key and the written
            # window from the memo (one lookup on the pid), the point, and an identity row
            # only when due.
            if len(row) != 17:  # the decoder checks it; a short row must not be an IndexError
                raise ValueError(f"a process row has 17 columns, got {len(row)}")
            pid, start = row[2], row[3]
            if start is None:
                start = UNKNOWN_START_TIME
            entry = by_pid.get(pid)
            if entry is None or entry[0] != start:
                entry = by_pid[pid] = [start, process_key(server_id, pid, start), INF, -INF]
                derived += 1
            key = entry[1]
            points.append((key, ts, row[9], row[12], row[13], row[10], row[11], row[8]))
            if not entry[2] <= seen_s <= entry[3] or entry[3] < stale_s:
                _add_identity(out.identities, key, server_id, pid, start, seen_s, row)
            if ts != process_ts:
                process_marks.add((server_id, ts))
                process_ts = ts
        elif kind == "g":
            name = row[2]
            entry = by_name.get(name)
            if entry is None:
                entry = by_name[name] = [group_key(server_id, name), INF, -INF]
                derived += 1
            key = entry[0]
            group_points.append((key, ts, *row[4:9], *row[11:18], row[3], row[9], row[10]))
            if not entry[1] <= seen_s <= entry[2] or entry[2] < stale_s:
                _add_group(out.groups, key, server_id, name, seen_s)
            if ts != group_ts:
                group_marks.add((server_id, ts))
                group_ts = ts
        elif kind == "h":
            out.host_messages += 1
        else:
            by_kind[kind].append(row)
        if seen_s > seen.last_seen_at:
            seen.last_seen_at = seen_s
        if seen_s < seen.first_seen_at:
            seen.first_seen_at = seen_s
        if kind == "h" and (seen.metadata_at is None or seen_s >= seen.metadata_at):
            report_id, hostname, os_type, os_version, boot_id, agent_version = row[2:]
            seen.metadata = (hostname, os_type, os_version, boot_id, agent_version, report_id)
            seen.metadata_at = seen_s
    identities.entries += derived
    return out


def _add_identity(identities: dict[int, list], key: int, server_id: str, pid: Any,
                  start: Any, seen_s: float, row: Sequence[Any]) -> None:
    """Add or merge the identity of a process sample into the batch's ``identities``
    (``seen_s``: the sample's time, clamped)."""
    identity = identities.get(key)
    if identity is None:
        identities[key] = [key, server_id, pid, start, row[4], row[16], seen_s, seen_s, row[5],
                           row[6], row[7], row[14], row[15]]
        return
    if identity[1] != server_id or identity[2] != pid or not same_start(identity[3], start):
        raise KeyCollisionError(key, (server_id, pid, start))
    if seen_s > identity[7]:  # the newest sample's values win
        identity[4:6] = row[4], row[16]
        identity[7:] = seen_s, row[5], row[6], row[7], row[14], row[15]
    elif seen_s < identity[6]:
        identity[6] = seen_s


def _add_group(groups: dict[int, list], key: int, server_id: str, name: Any, seen_s: float
               ) -> None:
    identity = groups.get(key)
    if identity is None:
        groups[key] = [key, server_id, seen_s, seen_s, name]
        return
    if identity[1] != server_id or identity[4] != name:
        raise KeyCollisionError(key, (server_id, name))
    if seen_s > identity[3]:
        identity[3] = seen_s
    elif seen_s < identity[2]:
        identity[2] = seen_s
