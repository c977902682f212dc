"""SQL that yields the cells of a plan: one row per (server_id, name, step) — or per (name,
step) from the fleet tables — with the columns of ``CELL_COLUMNS``.

The raw path calls the migration's ``rollup_group_minutes`` / ``rollup_process_minutes``
(the very functions the rollup job stores), so both paths share one definition of a rate.
Hour cells are minute cells added up per hour: sums, except ``memory_peak_bytes`` (max).

Only fixed SQL fragments are concatenated here; every value is a bind parameter (``Args``).
"""

from __future__ import annotations

from typing import Any

from ingest_gateway.query.window import HOUR_S, MINUTE_S, Plan

CELL_COLUMNS = ("samples", "cpu_seconds", "cpu_core_minutes", "memory_byte_minutes",
                "memory_peak_bytes", "num_procs_minutes")
RAW_FUNCTIONS = {"groups": "rollup_group_minutes", "processes": "rollup_process_minutes"}
ROLLUP_TABLES = {(False, MINUTE_S): "rollup_minute", (False, HOUR_S): "rollup_hour",
                 (True, MINUTE_S): "rollup_fleet_minute", (True, HOUR_S): "rollup_fleet_hour"}
_SUMMED = ", ".join(
    f"max(c.{col}) AS {col}" if col == "memory_peak_bytes" else f"sum(c.{col}) AS {col}"
    for col in CELL_COLUMNS)
_PLAIN = ", ".join(f"c.{col}" for col in CELL_COLUMNS)


class Args:
    """Bind parameters collected while a statement is built: ``args.add(v)`` → ``$n``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def cells_sql(plan: Plan, args: Args, *, name: str | None = None) -> str:
    """A SELECT of the plan's cells: ``[server_id,] name, ts, <CELL_COLUMNS>``; ``server_id``
    is absent for a fleet plan. ``name`` restricts it to one process name."""
    if plan.path == "raw":
        return _raw_cells(plan, args, name)
    return _rollup_cells(plan, args, name)


def _raw_cells(plan: Plan, args: Args, name: str | None) -> str:
    function = RAW_FUNCTIONS[plan.source]
    ids = args.add(list(plan.server_ids) if plan.server_ids is not None else None)
    source = (f"{function}({args.add(plan.grid_start)}::timestamptz, {args.add(plan.end)}"
              f"::timestamptz, {ids}::text[]) c")
    where = f" WHERE c.name = {args.add(name)}" if name is not None else ""
    if plan.step_s == MINUTE_S:
        return f"SELECT c.server_id, c.name, c.ts, {_PLAIN} FROM {source}{where}"
    return (f"SELECT c.server_id, c.name, date_trunc('hour', c.ts) AS ts, {_SUMMED} "
            f"FROM {source}{where} GROUP BY 1, 2, 3")


def _rollup_cells(plan: Plan, args: Args, name: str | None) -> str:
    # Cells are keyed by dictionary ids (migrations/0006): per server, the series of the
    # source (and servers, and name) first, then their cells in the window; fleet-wide, the
    # source's range of the window, labelled by the names dictionary.
    table = ROLLUP_TABLES[(plan.fleet, plan.step_s)]
    source = (f"c.source_code = rollup_source_code({args.add(plan.source)})" if plan.fleet
              else f"k.source = {args.add(plan.source)}")
    where = [source, f"c.ts >= {args.add(plan.grid_start)}", f"c.ts < {args.add(plan.end)}"]
    if not plan.fleet and plan.server_ids is not None:
        where.append(f"k.server_id = ANY({args.add(list(plan.server_ids))}::text[])")
    if name is not None:
        where.append(f"k.name = {args.add(name)}")
    if plan.fleet:
        return (f"SELECT k.name, c.ts, {_PLAIN} FROM {table} c "
                f"JOIN rollup_names k USING (name_id) WHERE {' AND '.join(where)}")
    return (f"SELECT k.server_id, k.name, c.ts, {_PLAIN} FROM {table} c "
            f"JOIN rollup_series_names k USING (series_id) WHERE {' AND '.join(where)}")


def step_slots_sql(plan: Plan, args: Args, ts: str) -> str:
    """Minute slots of the step starting at ``ts`` that fall inside the window (1 for minute
    steps; fewer than 60 for the first and last hour of an hour-step window)."""
    if plan.step_s == MINUTE_S:
        return "1"
    start, end = args.add(plan.start), args.add(plan.end)
    return (f"greatest(ceil(extract(epoch FROM least({ts} + interval '1 hour', "
            f"{end}::timestamptz) - greatest({ts}, {start}::timestamptz)) / 60), 1)")
