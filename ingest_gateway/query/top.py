"""``GET /api/processes/top``: the process names that used the most CPU or memory.

How values aggregate (README "## API" is the user-facing copy):

1. Cells (``cells``): per server, name and step (1 min or 1 h), from the raw samples or the
   rollups; the per-series rates are computed first and only then summed per name.
2. Steps: each step's cells are summed over the selected servers.
3. Per name, over the window ``[from, to)``:
   - ``avg_cpu_percent`` = 100 × CPU-seconds used in the window / window seconds: the
     average number of cores in use, summed over servers (100 % = one core fully busy).
   - ``peak_cpu_percent`` = 100 × the highest step's average cores (summed over servers).
   - ``avg_memory_mb`` / ``avg_num_procs``: time averages over the whole window (a name
     present for half the window counts half), summed over servers.
   - ``peak_memory_mb``: the highest step's sum over servers of each server's peak.
   - ``servers``: the number of selected servers where the name had samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from ingest_gateway.query.cells import Args, cells_sql, step_slots_sql
from ingest_gateway.query.params import TopParams
from ingest_gateway.query.window import HOUR_S, Plan, plan_query

MIB = 1024 * 1024
ORDER_COLUMNS = {"cpu": "cpu_seconds", "memory": "byte_minutes"}


@dataclass(frozen=True)
class TopResult:
    """The answer of the top endpoint (``as_json`` is the response body)."""

    params: TopParams
    plan: Plan
    processes: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "metric": self.params.metric,
            "time_range_hours": round(plan.window_s / HOUR_S, 4),
            "from": iso(plan.start),
            "to": iso(plan.end),
            "source": plan.source,
            "step_s": plan.step_s,
            "path": plan.path,
            "processes": self.processes,
        }


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def choose_source(conn: asyncpg.Connection, params_source: str | None, start, end,
                        server_ids: tuple[str, ...] | None) -> str:
    """``groups`` when process_exporter groups have samples in the window (for the selected
    servers), else ``processes``; an explicit ``source`` wins."""
    if params_source is not None:
        return params_source
    args = Args()
    where = f"ts >= {args.add(start)} AND ts < {args.add(end)}"
    if server_ids is not None:
        where += f" AND server_id = ANY({args.add(list(server_ids))}::text[])"
    # The fleet rollup answers for long windows without touching the samples.
    found = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM rollup_fleet_hour "
        f"WHERE source_code = rollup_source_code('groups') AND {where}"
        f") OR EXISTS (SELECT 1 FROM process_group_samples WHERE {where})"
        if server_ids is None else
        f"SELECT EXISTS (SELECT 1 FROM process_group_samples WHERE {where})",
        *args.values)
    return "groups" if found else "processes"


def top_sql(plan: Plan, metric: str, limit: int) -> tuple[str, list[Any]]:
    args = Args()
    cells = cells_sql(plan, args)
    slots = step_slots_sql(plan, args, "s.ts")
    order = ORDER_COLUMNS[metric]
    # A fleet plan has no server_id in its cells: fleet_servers() counts them afterwards.
    servers = ("" if plan.fleet else
               "LEFT JOIN (SELECT c.name, count(DISTINCT c.server_id) AS servers FROM cells c "
               "WHERE c.name IN (SELECT name FROM names) GROUP BY c.name) sv USING (name)")
    if plan.fleet:  # fleet cells are already one row per (name, step), summed over servers
        steps = ("SELECT c.name, c.ts, c.cpu_seconds, c.cpu_core_minutes AS core_minutes, "
                 "c.memory_byte_minutes AS byte_minutes, c.memory_peak_bytes AS peak_bytes, "
                 "c.num_procs_minutes AS procs_minutes FROM cells c")
    else:
        steps = ("SELECT c.name, c.ts, sum(c.cpu_seconds) AS cpu_seconds, "
                 "sum(c.cpu_core_minutes) AS core_minutes, "
                 "sum(c.memory_byte_minutes) AS byte_minutes, "
                 "sum(c.memory_peak_bytes) AS peak_bytes, "
                 "sum(c.num_procs_minutes) AS procs_minutes FROM cells c GROUP BY c.name, c.ts")
    sql = f"""
WITH cells AS {"NOT MATERIALIZED" if plan.fleet else "MATERIALIZED"} ({cells}),
steps AS ({steps}),
names AS (
    SELECT s.name, sum(s.cpu_seconds) AS cpu_seconds,
           max(s.core_minutes / {slots}) AS peak_cores, sum(s.byte_minutes) AS byte_minutes,
           max(s.peak_bytes) AS peak_bytes, sum(s.procs_minutes) AS procs_minutes
    FROM steps s GROUP BY s.name
    ORDER BY {order} DESC, s.name LIMIT {args.add(limit)}
)
SELECT n.*, {"NULL::bigint AS servers" if plan.fleet else "sv.servers"}
FROM names n {servers} ORDER BY n.{order} DESC, n.name"""
    return sql, args.values


async def fleet_servers(conn: asyncpg.Connection, plan: Plan, names: list[str]) -> dict[str, int]:
    """Distinct servers per name for a fleet plan (the fleet tables have no server): one
    index probe per series of the name (one per server that ever ran it) that stops at the
    first cell in the window, instead of reading every cell of the top names (168,000 for 10
    names x 100 servers x 7 days)."""
    table = "rollup_minute" if plan.step_s == 60 else "rollup_hour"
    # LATERAL ... LIMIT 1 keeps it a loop of probes (an EXISTS becomes a semi-join that
    # hashes every cell of the window). ORDER BY makes a minute probe an index scan that
    # stops at the first cell, not a bitmap scan of the series' whole window (4x faster,
    # bench_query --quick); hour cells span many partitions, where an ordered probe would
    # open every one of them.
    order = " ORDER BY r.ts" if table == "rollup_minute" else ""
    rows = await conn.fetch(
        f"SELECT k.name, count(*) AS servers FROM rollup_series_names k "
        f"CROSS JOIN LATERAL (SELECT 1 FROM {table} r WHERE r.series_id = k.series_id "
        f"AND r.ts >= $3 AND r.ts < $4{order} LIMIT 1) hit "
        f"WHERE k.source = $1 AND k.name = ANY($2::text[]) GROUP BY k.name",
        plan.source, names, plan.grid_start, plan.end)
    return {row["name"]: row["servers"] for row in rows}


async def top_processes(conn: asyncpg.Connection, params: TopParams, *,
                        path: str | None = None, retention_days: float | None = None,
                        rollup_retention_days: tuple[float, float] | None = None
                        ) -> TopResult:
    """Run the top query on ``conn`` (``path`` forces raw or rollup: benchmarks, tests); the
    window starts where the data does (``window.data_start``)."""
    time_range = params.time_range
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        source = await choose_source(conn, params.source, time_range.start, time_range.end,
                                     params.server_ids)
        plan = await plan_query(conn, time_range, source, params.server_ids, path=path,
                                retention_days=retention_days,
                                rollup_retention_days=rollup_retention_days)
        sql, args = top_sql(plan, params.metric, params.limit)
        rows = await conn.fetch(sql, *args)
        servers = (await fleet_servers(conn, plan, [r["name"] for r in rows])
                   if plan.fleet and rows else {})
    processes = [_process(row, plan, servers) for row in rows]
    return TopResult(params, plan, processes)


def _process(row: asyncpg.Record, plan: Plan, fleet_servers: dict[str, int]) -> dict[str, Any]:
    window_s, minutes = plan.window_s or 1.0, plan.window_minutes
    servers = row["servers"] if row["servers"] is not None else fleet_servers.get(row["name"], 0)
    return {
        "name": row["name"],
        "avg_cpu_percent": round(100 * row["cpu_seconds"] / window_s, 3),
        "peak_cpu_percent": round(100 * (row["peak_cores"] or 0.0), 3),
        "avg_memory_mb": round(row["byte_minutes"] / minutes / MIB, 3),
        "peak_memory_mb": round((row["peak_bytes"] or 0.0) / MIB, 3),
        "avg_num_procs": round(row["procs_minutes"] / minutes, 3),
        "servers": int(servers),
    }
