"""The fleet process inventory, read from ``process_identities`` (one row per OS process).

    GET /api/processes/search  processes whose name or command contains a text, live in a window
    GET /api/processes/new     names first seen on a server since a moment, new to that server

An identity is live in ``[from, to]`` when ``first_seen <= to`` and ``last_seen >= from``.
``q`` is a literal substring, matched case-insensitively: ``%``, ``_`` and ``\\`` in it are
escaped, never wildcards. A name is new on a server when its earliest identity there started
after ``since``: a restart of a name the server already ran (same name, new pid) is not new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ingest_gateway.query.params import (
    TimeRange,
    bad,
    parse_int,
    parse_server_ids,
    parse_time_range,
    parse_timestamp,
)
from ingest_gateway.query.top import iso

MAX_QUERY_CHARS = 256
MAX_INVENTORY_LIMIT, DEFAULT_INVENTORY_LIMIT = 1000, 100


@dataclass(frozen=True)
class SearchParams:
    """``GET /api/processes/search``: ``q`` literal text, the window, servers, ``limit``."""

    q: str
    time_range: TimeRange
    server_ids: tuple[str, ...] | None = None
    limit: int = DEFAULT_INVENTORY_LIMIT


@dataclass(frozen=True)
class NewParams:
    """``GET /api/processes/new``: names new on a server in ``(since, until]``."""

    since: datetime
    until: datetime
    server_ids: tuple[str, ...] | None = None
    limit: int = DEFAULT_INVENTORY_LIMIT


def _limit(query: Mapping[str, str]) -> int:
    value = parse_int(query, "limit", 1, MAX_INVENTORY_LIMIT, DEFAULT_INVENTORY_LIMIT)
    return value or DEFAULT_INVENTORY_LIMIT


def parse_search(query: Mapping[str, str], now: datetime) -> SearchParams:
    q = query.get("q")
    getall = getattr(query, "getall", None)
    if getall is not None and len(getall("q", [])) > 1:
        raise bad("q", "given more than once", getall("q")[:3])
    if q is None or not q.strip():
        raise bad("q", "is required and may not be blank", q)
    if len(q) > MAX_QUERY_CHARS:
        raise bad("q", f"must have at most {MAX_QUERY_CHARS} characters", len(q))
    return SearchParams(q=q, time_range=parse_time_range(query, now),
                        server_ids=parse_server_ids(query), limit=_limit(query))


def parse_new(query: Mapping[str, str], now: datetime) -> NewParams:
    getall = getattr(query, "getall", None)
    for name in ("since", "until"):
        if getall is not None and len(getall(name, [])) > 1:
            raise bad(name, "given more than once", getall(name)[:3])
    since_raw, until_raw = query.get("since"), query.get("until")
    if not since_raw:
        raise bad("since", "is required (RFC 3339, e.g. 2026-01-01T10:00:00Z)", since_raw)
    since = parse_timestamp("since", since_raw)
    until = parse_timestamp("until", until_raw) if until_raw else now
    if since >= until:
        raise bad("since", "must be before until (default: now)", since_raw)
    return NewParams(since=since, until=until, server_ids=parse_server_ids(query),
                     limit=_limit(query))


def like_literal(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere, literally (escape character ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# The matches live in the window, newest first. No index holds last_seen (migrations/0007:
# its refreshes stay HOT); last_seen_hour (last_seen rounded down to the hour) is indexed, on
# its own and after server_id. Two ways to find limit + 1 matches, newest hour first:
#
# - walk: the newest WALK_ROWS identities (of the servers) in index order, tested one by one,
#   lazily (MATERIALIZED CTEs are read as far as needed): a common text stops after a few
#   hundred. No window condition on that index scan: with one the planner prefers a bitmap
#   scan of the whole window and a sort (200 ms for 24 h of the benchmark fleet);
# - only when the walk found fewer and did not cover the window: the distinct texts that
#   match (process_texts: its trigram GIN index, or a scan of it for a 1–2 character text),
#   then their identities by hash (expression indexes), tested again (a hash may be shared).
#
# Ordering by the exact last_seen before the limit would make the walk read every live
# process first (they all share the newest hour), so when the answer is cut, the cut falls
# inside the oldest hour shown, in index order there; the rows returned are sorted by
# last_seen.
WALK_ROWS = 4_000
_SEARCH_SQL = r"""
WITH recent AS MATERIALIZED (
    SELECT i.* FROM process_identities i
    WHERE {servers}
    ORDER BY i.last_seen_hour DESC
    LIMIT {walk}
), walk AS MATERIALIZED (
    SELECT r.* FROM recent r
    WHERE (r.name ILIKE $1 ESCAPE '\' OR r.command ILIKE $1 ESCAPE '\')
      AND r.first_seen <= $3 AND r.last_seen >= $2
    LIMIT $5
), walked AS (
    SELECT (SELECT count(*) FROM walk) = $5
           OR (SELECT count(*) FROM recent) < {walk}
           OR (SELECT min(r.last_seen_hour) FROM recent r)
              < date_bin('1 hour', $2, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS done
), matched AS MATERIALIZED (
    SELECT coalesce(array_agg(DISTINCT t.hash), '{{}}') AS hashes FROM process_texts t
    WHERE NOT (SELECT done FROM walked) AND t.text ILIKE $1 ESCAPE '\'
), found AS (
    SELECT w.* FROM walk w WHERE (SELECT done FROM walked)
    UNION ALL
    (SELECT i.* FROM process_identities i
     WHERE NOT (SELECT done FROM walked)
       AND (hashtextextended(i.name, 0) = ANY ((SELECT m.hashes FROM matched m)::bigint[])
            OR hashtextextended(i.command, 0) = ANY ((SELECT m.hashes FROM matched m)::bigint[]))
       AND (i.name ILIKE $1 ESCAPE '\' OR i.command ILIKE $1 ESCAPE '\')
       AND i.first_seen <= $3 AND i.last_seen >= $2
       AND i.last_seen_hour >= date_bin('1 hour', $2, TIMESTAMPTZ '2000-01-01 00:00:00+00')
       AND {servers}
     ORDER BY i.last_seen_hour DESC
     LIMIT $5)
)
SELECT i.server_id, s.hostname, i.pid, i.start_time, i.name, i.command, i.username,
       i.first_seen, i.last_seen
FROM found i LEFT JOIN servers s ON s.server_id = i.server_id
ORDER BY i.last_seen DESC, i.server_id, i.pid
"""
# One server: an equality, so that the walk down (server_id, last_seen_hour) is in order.
_ONE_SERVER = "i.server_id = ($4::text[])[1]"
_SERVERS = "($4::text[] IS NULL OR i.server_id = ANY ($4::text[]))"


def search_sql(server_ids: tuple[str, ...] | None) -> str:
    """The SQL of a search of ``server_ids`` (bench/bench_inventory.py explains it)."""
    one = server_ids is not None and len(server_ids) == 1
    return _SEARCH_SQL.format(servers=_ONE_SERVER if one else _SERVERS, walk=WALK_ROWS)


async def search_processes(conn: asyncpg.Connection, params: SearchParams) -> dict[str, Any]:
    """The processes matching ``params.q`` in the window, newest ``last_seen`` first."""
    window = params.time_range
    server_ids = list(params.server_ids) if params.server_ids is not None else None
    # One row more than asked says whether the answer was cut.
    rows = await conn.fetch(search_sql(params.server_ids), like_literal(params.q),
                            window.start, window.end, server_ids, params.limit + 1)
    return {
        "q": params.q, "from": iso(window.start), "to": iso(window.end),
        "truncated": len(rows) > params.limit,
        "processes": [{
            "server_id": r["server_id"], "hostname": r["hostname"], "pid": r["pid"],
            # The agent sends the epoch when it does not know a process's start time.
            "start_time": iso(r["start_time"]) if r["start_time"].timestamp() > 0 else None,
            "name": r["name"], "command": r["command"], "user": r["username"],
            "first_seen": iso(r["first_seen"]), "last_seen": iso(r["last_seen"]),
        } for r in rows[:params.limit]],
    }


# process_names (migrations/0007) holds per (server, name) the earliest first_seen of its
# identities in the retained history and that identity's command: a name is new on a server
# when that first_seen is in (since, until]. Then per name: how many servers, the earliest
# first_seen and its command.
_NEW_SQL = """
SELECT n.name, count(*) AS servers, min(n.first_seen) AS first_seen,
       (array_agg(n.command ORDER BY n.first_seen, n.server_id))[1] AS example_command
FROM process_names n
WHERE n.first_seen > $1 AND n.first_seen <= $2
  AND ($3::text[] IS NULL OR n.server_id = ANY ($3::text[]))
GROUP BY n.name
ORDER BY servers DESC, first_seen, n.name
LIMIT $4
"""


async def new_processes(conn: asyncpg.Connection, params: NewParams) -> dict[str, Any]:
    """The names new on at least one server since ``params.since``, most servers first."""
    server_ids = list(params.server_ids) if params.server_ids is not None else None
    rows = await conn.fetch(_NEW_SQL, params.since, params.until, server_ids,
                            params.limit + 1)
    return {
        "since": iso(params.since), "until": iso(params.until),
        "truncated": len(rows) > params.limit,
        "names": [{
            "name": r["name"], "servers": r["servers"], "first_seen": iso(r["first_seen"]),
            "example_command": r["example_command"],
        } for r in rows[:params.limit]],
    }
