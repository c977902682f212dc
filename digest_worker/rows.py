"""Decoded stream messages → table rows.

A decoded message is ``(kind, row)`` with ``row`` in the order of ``stream.COLUMNS[kind]``.
The sample tables keep that column order (migrations/0001) and the worker's connections take
timestamps as the stream carries them (digest_worker/timestamps.py), so a message *is* its
table row: the only change is the start-time sentinel of a process without one.

A server's sighting (first/last seen, metadata time) never moves past this worker's clock: a
host whose clock runs ahead (the gateway allows ``max_future_s`` of skew) must not keep its
``last_seen_at`` in the future, where it would never show stale. The samples keep their ``ts``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from digest_worker.timestamps import UNKNOWN_START_TIME
from ingest_gateway import stream

# kind -> table, and the table columns in stream order ("user" is a reserved word in SQL).
TABLE_OF_KIND = {
    stream.KIND_PROCESS: "process_samples",
    stream.KIND_GROUP: "process_group_samples",
    stream.KIND_SNAPSHOT: "snapshots",
}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    table: tuple("username" if c == "user" else c for c in stream.COLUMNS[kind])
    for kind, table in TABLE_OF_KIND.items()
}
SERVER_COLUMNS = (
    "server_id", "hostname", "os_type", "os_version", "boot_id", "agent_version",
    "last_report_id", "metadata_at", "first_seen_at", "last_seen_at",
)
_P_START = stream.COLUMNS[stream.KIND_PROCESS].index("start_time")


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


def build_rows(messages: list[tuple[str, Sequence[Any]]], *,
               clock: Callable[[], float] = time.time) -> TableRows:
    """Table rows of decoded ``messages``. Raises ``TypeError`` on a value that cannot be a
    row here; the database rejects the others (the writer isolates the message either way).
    Sighting times are clamped to ``clock()`` (epoch seconds)."""
    now_s = clock()
    out = TableRows()
    tables = out.tables
    by_kind = {kind: tables[table] for kind, table in TABLE_OF_KIND.items()}
    servers = out.servers
    last_server, seen = None, None
    for kind, row in messages:
        server_id, ts = row[0], row[1]
        if type(ts) is not float and type(ts) is not int:
            raise TypeError(f"ts must be epoch seconds, got {ts!r}")
        seen_s = ts if ts <= now_s else now_s
        if kind == "h":
            out.host_messages += 1
        elif kind == "p" and row[_P_START] is None:
            by_kind[kind].append((*row[:_P_START], UNKNOWN_START_TIME, *row[_P_START + 1:]))
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
