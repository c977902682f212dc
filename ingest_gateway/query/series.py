"""``GET /api/processes/{name}/series``: one process name over time, for charts.

Each point is the average over its step (``step_s``), summed over the selected servers:
``cpu`` in percent of one core (100 × core-minutes / minutes of the step), ``memory`` in MB
(MiB, byte-minutes / minutes of the step). Every step of the window has a point; a step
without samples has ``value: null`` (the chart shows a gap, not a fake zero).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from ingest_gateway.query.cells import Args, cells_sql
from ingest_gateway.query.params import SeriesParams
from ingest_gateway.query.top import MIB, choose_source, iso
from ingest_gateway.query.window import HOUR_S, MINUTE_S, Plan, floor_to, plan_query

# Window length -> default step: a few hundred points at most.
DEFAULT_STEPS_S = ((timedelta(hours=6), 60), (timedelta(hours=24), 300),
                   (timedelta(hours=72), 900), (timedelta(days=365), 3600))


@dataclass(frozen=True)
class SeriesResult:
    """The answer of the series endpoint (``as_json`` is the response body)."""

    params: SeriesParams
    plan: Plan
    step_s: int
    points: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.params.name,
            "metric": self.params.metric,
            "unit": "percent" if self.params.metric == "cpu" else "MB",
            "source": self.plan.source,
            "step_s": self.step_s,
            # the first bucket: where the data starts, on the step grid (the chart's left edge)
            "from": iso(floor_to(self.plan.start, self.step_s)),
            "to": iso(self.plan.end),
            "path": self.plan.path,
            "points": self.points,
        }


def default_step_s(length: timedelta) -> int:
    for limit, step_s in DEFAULT_STEPS_S:
        if length <= limit:
            return step_s
    return DEFAULT_STEPS_S[-1][1]


async def process_series(conn: asyncpg.Connection, params: SeriesParams, *,
                         path: str | None = None, retention_days: float | None = None,
                         rollup_retention_days: tuple[float, float] | None = None
                         ) -> SeriesResult:
    """Run the series query on ``conn`` (``path`` forces raw or rollup)."""
    time_range = params.time_range
    step_s = params.step_s or default_step_s(time_range.length)
    # Hour cells serve steps of whole hours; anything else adds up minute cells.
    cell_step_s = HOUR_S if step_s % HOUR_S == 0 else MINUTE_S
    time_range = replace(time_range, start=floor_to(time_range.start, step_s))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        source = await choose_source(conn, params.source, time_range.start, time_range.end,
                                     params.server_ids)
        plan = await plan_query(conn, time_range, source, params.server_ids,
                                step_s=cell_step_s, path=path,
                                retention_days=retention_days,
                                rollup_retention_days=rollup_retention_days)
        args = Args()
        cells = cells_sql(plan, args, name=params.name)
        step = args.add(timedelta(seconds=step_s))
        rows = await conn.fetch(
            f"SELECT date_bin({step}::interval, c.ts, 'epoch'::timestamptz) AS bucket, "
            f"sum(c.cpu_core_minutes) AS core_minutes, "
            f"sum(c.memory_byte_minutes) AS byte_minutes "
            f"FROM ({cells}) c GROUP BY 1 ORDER BY 1", *args.values)
    by_bucket = {row["bucket"]: row for row in rows}
    points = []
    # Buckets stay on the step grid; the first one starts at or before the data start.
    bucket = floor_to(plan.start, step_s)
    while bucket < plan.end:
        row = by_bucket.get(bucket)
        value = None
        if row is not None:
            slots = _slots(bucket, step_s, plan)
            value = (100 * row["core_minutes"] / slots if params.metric == "cpu"
                     else row["byte_minutes"] / slots / MIB)
            value = round(value, 3)
        points.append({"ts": iso(bucket), "value": value})
        bucket += timedelta(seconds=step_s)
    return SeriesResult(params, plan, step_s, points)


def _slots(bucket: datetime, step_s: int, plan: Plan) -> int:
    """Minute slots of the step inside the window (a partial minute counts as one)."""
    start = max(bucket, plan.start)
    end = min(bucket + timedelta(seconds=step_s), plan.end)
    seconds = (end - start).total_seconds()
    return max(int(-(-seconds // MINUTE_S)), 1)
