"""Decoded stream messages → table rows.

A decoded message is ``(kind, row)`` with ``row`` in the order of ``stream.COLUMNS[kind]``.
The worker's connections take timestamps as the stream carries them
(digest_worker/timestamps.py). A snapshot message *is* its table row. A process or group
sample becomes a point (its identity's key, ts and what moves: ``TABLE_COLUMNS``) written to
``TABLE_TARGET`` (migrations/0003), plus its identity, deduplicated per batch
(digest_worker/identity.py writes those). A process without a start time gets the sentinel.

A server's sighting (first/last seen, metadata time) never moves past this worker's clock: a
host whose clock runs ahead (the gateway allows ``max_future_s`` of skew) must not keep its
``last_seen_at`` in the future, where it would never show stale. The samples keep their ``ts``,
and so do the identities' first/last seen: they describe the samples (the raw path's server
filter and the late-sample triggers rely on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from digest_worker import identity as _identity
from digest_worker.identity import (
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
    With ``identities`` (the writer's), a sample whose identity that writer has written and
    committed within its refresh window adds no identity row: most samples, in steady state.
    Server sighting times are clamped to ``clock()`` (epoch seconds)."""
    known_get = (identities.known_processes if identities is not None else {}).get
    refresh_s = identities.refresh_s if identities is not None else 0.0
    keys_get = _identity._process_keys.get  # cleared in place, never replaced
    now_s = clock()
    # written longer ago than this: maybe expired since (identity.TRUST_S), write it again
    stale_s = now_s - (identities.trust_s if identities is not None else 0.0)
    out = TableRows()
    tables = out.tables
    by_kind = {kind: tables[table] for kind, table in TABLE_OF_KIND.items()}
    points = by_kind["p"]
    servers = out.servers
    last_server, seen = None, None
    for kind, row in messages:
        server_id, ts = row[0], row[1]
        if type(ts) is not float and type(ts) is not int:
            raise TypeError(f"ts must be epoch seconds, got {ts!r}")
        seen_s = ts if ts <= now_s else now_s
        if kind == "p":
            # The hot path, inline (a call per row is measurable): index the row, memoised
            # key first, and no identity row for one written and committed within the
            # refresh window (written: (first_seen, last_seen, identity)).
            if len(row) != 17:  # the decoder checks it; a short row must not be an IndexError
                raise ValueError(f"a process row has 17 columns, got {len(row)}")
            pid, start = row[2], row[3]
            if start is None:
                start = UNKNOWN_START_TIME
            memo = (server_id, pid, start)
            key = keys_get(memo)
            if key is None:
                key = process_key(server_id, pid, start)
            points.append((key, ts, row[9], row[12], row[13], row[10], row[11], row[8]))
            written = known_get(key)
            if written is None or not written[0] <= ts <= written[1] + refresh_s or (
                    written[1] < stale_s or written[2] != memo):
                _add_identity(out.identities, key, memo, row)
        elif kind == "g":
            _add_group(out, by_kind["g"], row)
        elif kind == "h":
            out.host_messages += 1
        else:
            by_kind[kind].append(row)
        # Consecutive messages mostly come from one report, hence one server.
        if server_id != last_server:
            seen = servers.get(server_id)
            if seen is None:
                if type(server_id) is not str:
                    raise TypeError(f"server_id must be a string, got {server_id!r}")
                seen = servers[server_id] = ServerSighting(seen_s, seen_s)
            last_server = server_id
        if seen_s > seen.last_seen_at:
            seen.last_seen_at = seen_s
        elif seen_s < seen.first_seen_at:
            seen.first_seen_at = seen_s
        if kind == "h" and (seen.metadata_at is None or seen_s >= seen.metadata_at):
            report_id, hostname, os_type, os_version, boot_id, agent_version = row[2:]
            seen.metadata = (hostname, os_type, os_version, boot_id, agent_version, report_id)
            seen.metadata_at = seen_s
    return out


def _add_identity(identities: dict[int, list], key: int, memo: tuple, row: Sequence[Any]
                  ) -> None:
    """Add or merge the identity of a process sample into the batch's ``identities``."""
    server_id, pid, start = memo
    ts = row[1]
    identity = identities.get(key)
    if identity is None:
        identities[key] = [key, server_id, pid, start, row[4], row[16], ts, ts, row[5],
                           row[6], row[7], row[14], row[15]]
        return
    if identity[1] != server_id or identity[2] != pid or not same_start(identity[3], start):
        raise KeyCollisionError(key, memo)
    if ts > identity[7]:  # the newest sample's values win
        identity[4:6] = row[4], row[16]
        identity[7:] = ts, row[5], row[6], row[7], row[14], row[15]
    elif ts < identity[6]:
        identity[6] = ts


def _add_group(out: TableRows, points: list, row: Sequence[Any]) -> None:
    server_id, ts, name = row[0], row[1], row[2]
    key = group_key(server_id, name)
    points.append((key, ts, *row[4:9], *row[11:18], row[3], row[9], row[10]))
    identity = out.groups.get(key)
    if identity is None:
        out.groups[key] = [key, server_id, ts, ts, name]
        return
    if identity[1] != server_id or identity[4] != name:
        raise KeyCollisionError(key, (server_id, name))
    if ts > identity[3]:
        identity[3] = ts
    elif ts < identity[2]:
        identity[2] = ts
