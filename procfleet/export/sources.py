"""What each export source reads: its columns and the SQL that yields them, in that order.

Every source is one ``Source``: the columns (name, type, unit) and a function
``sql(server_ids) -> str`` whose statement takes ``$1`` = start and ``$2`` = end (the half-open
``[start, end)`` on ``ts``) and ``$3`` = the server ids (``text[]``, NULL = every server). When
the storage schema changes, only these functions change.

CPU of the sample sources comes as the stored counter and as per-interval values computed
with LAG over one series exactly as the query API computes rates (migrations/0002,
``rollup_*_minutes``): a counter that went down is a reset (the delta is the new value); a gap
over ``rollup_max_rate_gap()`` gives no rate; an OS process first seen within that gap of its
start time counts its whole counter since it started. Samples up to that gap before ``start``
are read to seed the LAG, so a file's first rows have rates like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Column kinds -> pyarrow types (see files.arrow_type); "ts" is UTC with microseconds.
TEXT, TS, INT64, INT32, FLOAT64 = "text", "ts", "int64", "int32", "float64"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    unit: str = ""


@dataclass(frozen=True)
class Source:
    name: str
    columns: tuple[Column, ...]
    sql: Callable[[], str]


_SERVERS = "($3::text[] IS NULL OR s.server_id = ANY ($3::text[]))"
# The samples of the window (and the LAG's lookback before it), hot rows and compacted history
# alike (migrations 0003-0005), read through the functions that take the window and the
# servers: the process_samples / process_group_samples views would decode every compacted
# hour before filtering on ts.
_WINDOW = ("$1::timestamptz - rollup_max_rate_gap(), $2::timestamptz, $3::text[]")
_PROCESS_SAMPLES = f"""
    SELECT i.server_id, p.ts, i.pid, i.start_time, i.ppid, i.username, i.name, i.command,
           p.state, p.cpu_seconds_total, p.cpu_percent, p.memory_percent, p.rss_bytes,
           p.vsz_bytes, i.tty, i.session_name, i.session_id
    FROM process_points_between({_WINDOW}) p JOIN process_identities i ON i.key = p.key"""
_GROUP_SAMPLES = f"""
    SELECT g.server_id, p.ts, g.name, p.num_procs, p.cpu_user_seconds_total,
           p.cpu_system_seconds_total, p.memory_resident_bytes, p.memory_virtual_bytes,
           p.memory_swapped_bytes, p.num_threads, p.open_fds, p.read_bytes_total,
           p.write_bytes_total, p.major_page_faults_total, p.minor_page_faults_total,
           p.context_switches_voluntary_total, p.context_switches_nonvoluntary_total,
           p.oldest_start_time
    FROM process_group_points_between({_WINDOW}) p JOIN process_groups g ON g.key = p.key"""

PROCESS_COLUMNS = (
    Column("server_id", TEXT), Column("ts", TS, "UTC"), Column("pid", INT64),
    Column("start_time", TS, "UTC; null = unknown (tasklist)"), Column("ppid", INT64),
    Column("user", TEXT), Column("name", TEXT), Column("command", TEXT, "as stored (scrubbed)"),
    Column("state", TEXT),
    Column("cpu_seconds_total", FLOAT64, "s, cumulative counter"),
    Column("cpu_seconds", FLOAT64, "s used since the previous sample (reset-safe)"),
    Column("interval_s", FLOAT64, "s since the previous sample"),
    Column("cpu_cores", FLOAT64, "cpu_seconds / interval_s (1.0 = one core busy)"),
    Column("ps_cpu_percent", FLOAT64, "ps' own %CPU (a lifetime average on Linux)"),
    Column("memory_percent", FLOAT64, "% of host RAM"),
    Column("rss_bytes", INT64, "bytes"), Column("vsz_bytes", INT64, "bytes"),
    Column("tty", TEXT), Column("session_name", TEXT), Column("session_id", INT32),
)


def processes_sql() -> str:
    """OS processes (ps / tasklist): one row per process sample."""
    return f"""
WITH lagged AS (
    SELECT s.*, LAG(s.ts) OVER w AS prev_ts, LAG(s.cpu_seconds_total) OVER w AS prev_cpu
    FROM ({_PROCESS_SAMPLES}) s
    WINDOW w AS (PARTITION BY s.server_id, s.pid, s.start_time ORDER BY s.ts)
), rated AS (
    SELECT l.*,
           CASE WHEN l.prev_ts IS NOT NULL AND l.ts - l.prev_ts <= rollup_max_rate_gap()
                THEN CASE WHEN l.cpu_seconds_total >= l.prev_cpu
                          THEN l.cpu_seconds_total - l.prev_cpu
                          WHEN l.cpu_seconds_total < l.prev_cpu THEN l.cpu_seconds_total END
                WHEN l.prev_ts IS NULL AND l.start_time > 'epoch'::timestamptz
                     AND l.ts - l.start_time BETWEEN interval '0' AND rollup_max_rate_gap()
                THEN l.cpu_seconds_total
           END AS delta,
           CASE WHEN l.prev_ts IS NOT NULL AND l.ts - l.prev_ts <= rollup_max_rate_gap()
                THEN extract(epoch FROM l.ts - l.prev_ts)::double precision
                WHEN l.prev_ts IS NULL AND l.start_time > 'epoch'::timestamptz
                     AND l.ts - l.start_time BETWEEN interval '0' AND rollup_max_rate_gap()
                THEN greatest(extract(epoch FROM l.ts - l.start_time)::double precision, 1)
           END AS dt
    FROM lagged l
    WHERE l.ts >= $1::timestamptz
)
SELECT r.server_id, r.ts, r.pid, NULLIF(r.start_time, 'epoch'::timestamptz), r.ppid,
       r.username, r.name, r.command, r.state, r.cpu_seconds_total,
       r.delta, CASE WHEN r.delta IS NOT NULL THEN r.dt END,
       r.delta / nullif(r.dt, 0), r.cpu_percent::double precision,
       r.memory_percent::double precision, r.rss_bytes, r.vsz_bytes, r.tty, r.session_name,
       r.session_id
FROM rated r"""


GROUP_COLUMNS = (
    Column("server_id", TEXT), Column("ts", TS, "UTC"), Column("name", TEXT),
    Column("num_procs", INT32),
    Column("cpu_user_seconds_total", FLOAT64, "s, cumulative counter"),
    Column("cpu_system_seconds_total", FLOAT64, "s, cumulative counter"),
    Column("cpu_seconds_total", FLOAT64, "s, user + system counter"),
    Column("cpu_seconds", FLOAT64, "s used since the previous sample (reset-safe)"),
    Column("interval_s", FLOAT64, "s since the previous sample"),
    Column("cpu_cores", FLOAT64, "cpu_seconds / interval_s (1.0 = one core busy)"),
    Column("memory_resident_bytes", INT64, "bytes"),
    Column("memory_virtual_bytes", INT64, "bytes"),
    Column("memory_swapped_bytes", INT64, "bytes"), Column("num_threads", INT32),
    Column("open_fds", INT32), Column("read_bytes_total", INT64, "bytes, counter"),
    Column("write_bytes_total", INT64, "bytes, counter"),
    Column("major_page_faults_total", INT64, "counter"),
    Column("minor_page_faults_total", INT64, "counter"),
    Column("context_switches_voluntary_total", INT64, "counter"),
    Column("context_switches_nonvoluntary_total", INT64, "counter"),
    Column("oldest_start_time", TS, "UTC"),
)


def groups_sql() -> str:
    """process_exporter groups: one row per group sample."""
    return f"""
WITH lagged AS (
    SELECT s.*, s.cpu_user_seconds_total + s.cpu_system_seconds_total AS cpu,
           LAG(s.ts) OVER w AS prev_ts,
           LAG(s.cpu_user_seconds_total + s.cpu_system_seconds_total) OVER w AS prev_cpu
    FROM ({_GROUP_SAMPLES}) s
    WINDOW w AS (PARTITION BY s.server_id, s.name ORDER BY s.ts)
), rated AS (
    SELECT l.*,
           CASE WHEN l.ts - l.prev_ts <= rollup_max_rate_gap()
                THEN CASE WHEN l.cpu >= l.prev_cpu THEN l.cpu - l.prev_cpu
                          WHEN l.cpu < l.prev_cpu THEN l.cpu END
           END AS delta,
           CASE WHEN l.ts - l.prev_ts <= rollup_max_rate_gap()
                THEN extract(epoch FROM l.ts - l.prev_ts)::double precision
           END AS dt
    FROM lagged l
    WHERE l.ts >= $1::timestamptz
)
SELECT r.server_id, r.ts, r.name, r.num_procs, r.cpu_user_seconds_total,
       r.cpu_system_seconds_total, r.cpu, r.delta, CASE WHEN r.delta IS NOT NULL THEN r.dt END,
       r.delta / nullif(r.dt, 0), r.memory_resident_bytes, r.memory_virtual_bytes,
       r.memory_swapped_bytes, r.num_threads, r.open_fds, r.read_bytes_total,
       r.write_bytes_total, r.major_page_faults_total, r.minor_page_faults_total,
       r.context_switches_voluntary_total, r.context_switches_nonvoluntary_total,
       r.oldest_start_time
FROM rated r"""


ROLLUP_COLUMNS = (
    Column("source", TEXT, "groups | processes"), Column("server_id", TEXT),
    Column("name", TEXT), Column("ts", TS, "UTC start of the minute / hour"),
    Column("samples", INT32),
    Column("cpu_seconds", FLOAT64, "s used in the cell"),
    Column("cpu_core_minutes", FLOAT64, "cores x minutes (a minute cell: average cores)"),
    Column("memory_byte_minutes", FLOAT64, "bytes x minutes, resident"),
    Column("memory_peak_bytes", INT64, "bytes, sum over series of their peak"),
    Column("num_procs_minutes", FLOAT64, "processes x minutes"),
)


def _rollup_sql(table: str) -> str:
    # Cells are keyed by series_id; the dictionary view gives it back its source, server and
    # name (migrations/0006).
    return f"""
SELECT s.source, s.server_id, s.name, c.ts, c.samples, c.cpu_seconds, c.cpu_core_minutes,
       c.memory_byte_minutes, round(c.memory_peak_bytes)::bigint, c.num_procs_minutes
FROM {table} c JOIN rollup_series_names s USING (series_id)
WHERE c.ts >= $1::timestamptz AND c.ts < $2::timestamptz AND {_SERVERS}"""


def rollup_minute_sql() -> str:
    """Per-minute cells (the query API's rollup path), every source, per server."""
    return _rollup_sql("rollup_minute")


def rollup_hour_sql() -> str:
    """Per-hour cells: minute cells added up per hour."""
    return _rollup_sql("rollup_hour")


SOURCES = {
    "processes": Source("processes", PROCESS_COLUMNS, processes_sql),
    "groups": Source("groups", GROUP_COLUMNS, groups_sql),
    "rollup-minute": Source("rollup-minute", ROLLUP_COLUMNS, rollup_minute_sql),
    "rollup-hour": Source("rollup-hour", ROLLUP_COLUMNS, rollup_hour_sql),
}
