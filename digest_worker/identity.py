"""Process identities: the compact keys of the sample tables, and writing identities once.

A sample row carries a 64-bit ``key`` instead of its process's identity (migrations/0003):

- OS process: ``process_key(server_id, pid, start_time)``, group: ``group_key(server_id,
  name)`` — the first 8 bytes of an md5 over the identity's bytes, exactly as the SQL
  functions of the same names compute it (the migration converts old rows with those). The
  worker derives a key without asking the database; ``IdentityWriter`` memoises them.
- The identity rows (``process_identities``, ``process_groups``) are upserted in the batch's
  transaction, before its points, in key order (two workers never wait on each other in a
  cycle): ``COPY`` into a temporary staging table, then one ``INSERT … SELECT`` from it that
  empties it (a CTE's ``DELETE … RETURNING``). Not ``unnest`` of one array per column:
  asyncpg checks every array element against ``collections.abc`` types, which cost ~4 µs of
  client CPU per identity against ~1.5 µs for COPY (docs/BENCHMARKS.md).
  ``IdentityWriter`` remembers per server what it has written and committed, and
  ``build_rows`` skips an identity until a sample is ``REFRESH_S`` newer than the
  ``last_seen`` it wrote (or older than its ``first_seen``): most batches write no identity
  at all, and ``last_seen`` stays within a minute of the newest sample (45 s + one 15 s
  interval; sighting times are clamped to the worker's clock: digest_worker/rows.py). A
  remembered identity whose ``last_seen`` is more than ``TRUST_S`` old is written again with
  its samples: the retention may have expired it (digest_worker/retention.py; never before a
  day), and a replayed sample must bring its identity back, not point at a deleted one.
- Collisions: the upsert only updates a row whose identity matches, and returns the keys it
  wrote; a key missing from the answer (or two identities sharing a key in one batch) raises
  ``KeyCollisionError``, a poison error: the message is dead-lettered, never merged with
  another process's history.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import asyncpg

from agent.errors import ProcfleetError
from digest_worker.timestamps import encode_timestamptz

REFRESH_S = 45.0
# Half the shortest retention (1 day): clocks of workers and database may differ that much.
TRUST_S = 12 * 3600.0
INF = float("inf")
MEMO_MAX_ENTRIES = 500_000

_len = struct.Struct("!i")
_int64 = struct.Struct("!q")
_md5 = hashlib.md5

# Identity rows, in the order of the upserts below.
IDENTITY_COLUMNS = ("key", "server_id", "pid", "start_time", "ppid", "session_id",
                    "first_seen", "last_seen", "username", "name", "command", "tty",
                    "session_name")
GROUP_COLUMNS = ("key", "server_id", "first_seen", "last_seen", "name")
FIRST, LAST = 6, 7  # first_seen / last_seen in an identity row
G_FIRST, G_LAST = 2, 3

_LATEST = "CASE WHEN EXCLUDED.last_seen >= t.last_seen THEN EXCLUDED.{c} ELSE t.{c} END"
IDENTITY_STAGING = "staging_process_identities"
GROUP_STAGING = "staging_process_groups"


def _upsert_from_staging(table: str, staging: str, columns: tuple[str, ...], updates: str,
                         same_identity: str) -> str:
    # Emptying the staging table in the statement that reads it keeps an isolation probe
    # (several upserts in one transaction, under savepoints) from writing a row twice; a
    # failed probe rolls its COPY back. ORDER BY key: the lock order (see above).
    cols = ", ".join(columns)
    return f"""
WITH staged AS (DELETE FROM {staging} RETURNING {cols})
INSERT INTO {table} AS t ({cols})
SELECT {cols} FROM staged ORDER BY key
ON CONFLICT (key) DO UPDATE SET
    first_seen = LEAST(t.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(t.last_seen, EXCLUDED.last_seen){updates}
WHERE {same_identity}
RETURNING key
"""


IDENTITY_UPSERT = _upsert_from_staging(
    "process_identities", IDENTITY_STAGING, IDENTITY_COLUMNS,
    "".join(f",\n    {c} = {_LATEST.format(c=c)}"
            for c in IDENTITY_COLUMNS[8:] + ("ppid", "session_id")),
    "t.server_id = EXCLUDED.server_id AND t.pid = EXCLUDED.pid\n"
    "  AND t.start_time = EXCLUDED.start_time")
GROUP_UPSERT = _upsert_from_staging(
    "process_groups", GROUP_STAGING, GROUP_COLUMNS, "",
    "t.server_id = EXCLUDED.server_id AND t.name = EXCLUDED.name")


class KeyCollisionError(ProcfleetError, ValueError):
    """Two identities hash to one key (a ValueError: the writer treats it as poison)."""

    def __init__(self, key: int, identity: tuple[Any, ...]) -> None:
        self.key, self.identity = key, identity
        super().__init__(f"identity key {key} collides with another identity: {identity!r}")


def process_key(server_id: str, pid: int, start_time: float | str) -> int:
    """The key of an OS process; ``start_time`` as the stream carries it (epoch seconds or
    RFC 3339 text: the same instant gives the same key). Not memoised here: the writer keeps
    keys per server (``IdentityWriter``)."""
    try:
        server = server_id.encode()
        data = _len.pack(len(server)) + server + _int64.pack(pid)
    except (AttributeError, struct.error) as exc:
        raise TypeError(f"bad process identity {(server_id, pid, start_time)!r}: {exc}"
                        ) from None
    return _int64.unpack_from(_md5(data + encode_timestamptz(start_time),
                                   usedforsecurity=False).digest())[0]


def group_key(server_id: str, name: str) -> int:
    """The key of a process_exporter series (server_id, name)."""
    try:
        server = server_id.encode()
        data = _len.pack(len(server)) + server + name.encode()
    except AttributeError as exc:
        raise TypeError(f"bad group identity {(server_id, name)!r}: {exc}") from None
    return _int64.unpack_from(_md5(data, usedforsecurity=False).digest())[0]


def same_start(a: Any, b: Any) -> bool:
    return a == b or encode_timestamptz(a) == encode_timestamptz(b)


class IdentityWriter:
    """Upserts a batch's identity rows, and remembers per server what it wrote and committed.

    ``processes``: server_id -> pid -> ``[start_time, key, first_seen, last_seen + refresh_s]``
    and ``groups``: server_id -> name -> ``[key, first_seen, last_seen + refresh_s]``, both
    read and filled by ``build_rows`` (digest_worker/rows.py), which looks a sample's key and
    written window up there with one dict lookup on an int (or a short name) instead of
    hashing a (server_id, pid, start_time) tuple per row, and adds an identity row only for a
    sample outside its window or written longer than ``trust_s`` ago (``due``). An entry not
    written yet has the empty window ``(inf, -inf)``; a pid reused by another process replaces
    its entry (a miss: the key is derived again). The windows only widen in ``remember``,
    after COMMIT, which also forgets everything but its batch once ``max_entries`` entries
    were added."""

    def __init__(self, refresh_s: float = REFRESH_S,
                 max_entries: int = MEMO_MAX_ENTRIES, trust_s: float = TRUST_S) -> None:
        self.refresh_s = refresh_s
        self.trust_s = trust_s
        self.max_entries = max_entries
        self.processes: dict[str, dict[Any, list]] = {}
        self.groups: dict[str, dict[str, list]] = {}
        self.entries = 0  # added by build_rows (an upper bound: a reused pid replaces one)
        self.written = 0

    @staticmethod
    async def prepare(conn: asyncpg.Connection) -> None:
        """Create this connection's staging tables (run on every new connection)."""
        for staging, table in ((IDENTITY_STAGING, "process_identities"),
                               (GROUP_STAGING, "process_groups")):
            await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} "
                               f"(LIKE {table}) ON COMMIT DELETE ROWS")

    async def write(self, conn: asyncpg.Connection, identities: dict[int, list],
                    groups: dict[int, list]) -> None:
        """Upsert identity rows (those ``build_rows`` found due; inside the batch's
        transaction; ``conn`` went through ``prepare``)."""
        for sql, staging, columns, rows in (
                (IDENTITY_UPSERT, IDENTITY_STAGING, IDENTITY_COLUMNS, identities),
                (GROUP_UPSERT, GROUP_STAGING, GROUP_COLUMNS, groups)):
            if not rows:
                continue
            await conn.copy_records_to_table(staging, records=rows.values(), columns=columns)
            written = await conn.fetch(sql)
            self.written += len(written)
            if len(written) != len(rows):
                keys = {r["key"] for r in written}
                row = next(r for key, r in rows.items() if key not in keys)
                raise KeyCollisionError(row[0], tuple(row[1:4]))

    def remember(self, identities: dict[int, list], groups: dict[int, list]) -> None:
        """Call after COMMIT: these identities are in the database up to their last_seen."""
        if self.entries > self.max_entries:
            self.processes.clear()
            self.groups.clear()
            self.entries = 0
        refresh_s = self.refresh_s
        for key, row in identities.items():
            server_id, pid, start = row[1], row[2], row[3]
            by_pid = self.processes.get(server_id)
            if by_pid is None:
                by_pid = self.processes[server_id] = {}
            entry = by_pid.get(pid)
            if entry is None or entry[1] != key or entry[0] != start:
                entry = by_pid[pid] = [start, key, INF, -INF]
                self.entries += 1
            _widen(entry, 2, row[FIRST], row[LAST] + refresh_s)
        for key, row in groups.items():
            server_id, name = row[1], row[4]
            by_name = self.groups.get(server_id)
            if by_name is None:
                by_name = self.groups[server_id] = {}
            entry = by_name.get(name)
            if entry is None or entry[0] != key:
                entry = by_name[name] = [key, INF, -INF]
                self.entries += 1
            _widen(entry, 1, row[G_FIRST], row[G_LAST] + refresh_s)


def _widen(entry: list, at: int, first: Any, last_plus_refresh: Any) -> None:
    if first < entry[at]:
        entry[at] = first
    if last_plus_refresh > entry[at + 1]:
        entry[at + 1] = last_plus_refresh


def merge_rows(rows: list[list], first: int) -> dict[int, list]:
    """key -> one identity row from ``rows`` (process rows if ``first == FIRST``, group rows if
    ``G_FIRST``) that may repeat a key: the widest first/last seen, the newest values, as
    build_rows merges a batch's samples. The rows are not modified. Two identities under one
    key raise ``KeyCollisionError``."""
    last = first + 1
    merged: dict[int, list] = {}
    for row in rows:
        have = merged.get(row[0])
        if have is None:
            merged[row[0]] = list(row)
            continue
        if _identity(have, first) != _identity(row, first) and not (
                first == FIRST and have[1:3] == row[1:3] and same_start(have[3], row[3])):
            raise KeyCollisionError(row[0], _identity(row, first))
        if row[last] > have[last]:  # the newest sample's values win
            have[first + 1:] = row[first + 1:]
            if first == FIRST:
                have[4:6] = row[4:6]
        if row[first] < have[first]:
            have[first] = row[first]
    return merged


def _identity(row: list, first: int) -> tuple:
    """(server_id, pid, start_time) of an identity row, (server_id, name) of a group row."""
    return (row[1], row[2], row[3]) if first == FIRST else (row[1], row[4])
