"""The effective window of a query: its step, its bounds, and which data serves it.

Rules (README "## API" documents them for users):

- **Step** (the resolution of peaks and of the rollup read): 1 minute for windows up to
  6 hours, 1 hour beyond. The window is widened to whole steps (start rounded down, end
  rounded up) and then cut at the data's horizon: now (raw path) or the rollup watermark.
- **Path**: the rollups whenever they can serve the window — the window ends at the rollup
  watermark (a whole minute, normally 1–2 minutes behind real time). The raw samples (rates
  computed with LAG at query time, up to the current second) when they cannot: no rollup yet,
  its watermark more than ``MAX_ROLLUP_LAG`` behind the window's end, or the window entirely
  after the watermark. Both give the same numbers for the same window (tests/query); the raw
  path reads ~240 samples per series and hour, the rollup 60 cells (1 per fleet-wide name for
  the fleet tables), so at fleet scale it is 50–2000x slower (docs/BENCHMARKS.md).
- **Data start**: the window starts no earlier than the data does — the first sample the
  selected servers hold (``servers.first_seen_at``, one small table) or the retention
  horizon of the tier that serves it, whichever is later: ``PROCFLEET_RETENTION_DAYS`` for
  the raw path, ``PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS`` for minute cells,
  ``PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS`` for hour cells. A window of minute steps that
  starts before the minute cells' horizon is served by hour cells when its step is free
  (``/top``), else cut at that horizon; a window the rollups cannot serve (forced raw, or the
  rollup lagging) is cut at the raw horizon. A deployment two minutes old averages over two
  minutes, not over the hour asked for (averages divide by the window; the answer's
  ``from`` says where it starts). The horizon cuts the requested start (then widened to the
  step like it); a first sample later than both is the start itself, while cells are still
  read from the step grid (``read_start``): nothing precedes the first sample, so its grid
  cell holds only data from it on.
- **Fleet tables**: a rollup query over every server (no ``server_ids``) reads the
  cross-server sums (``rollup_fleet_*``), ~100 rows per step instead of one per server.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from ingest_gateway.query.params import TimeRange

log = logging.getLogger(__name__)

MINUTE_S, HOUR_S = 60, 3600
MINUTE_STEP_MAX_WINDOW = timedelta(hours=6)
MAX_ROLLUP_LAG = timedelta(minutes=10)
PATHS = ("raw", "rollup")


@dataclass(frozen=True)
class Plan:
    """How one query reads its data: ``source`` groups|processes, ``path`` raw|rollup,
    ``step_s`` 60|3600 (cell granularity), the effective ``[start, end)`` (what averages
    divide by), ``read_start`` (``start`` on the step grid, where cells are read from), and
    ``fleet`` when the rollup's cross-server tables serve it."""

    source: str
    path: str
    step_s: int
    start: datetime
    end: datetime
    server_ids: tuple[str, ...] | None
    fleet: bool = False
    read_start: datetime | None = None  # None: ``start`` (already on the grid)

    @property
    def grid_start(self) -> datetime:
        return self.start if self.read_start is None else self.read_start

    @property
    def window_s(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0)

    @property
    def window_minutes(self) -> int:
        """Whole-minute slots the window touches (a partial last minute counts as one)."""
        return max(math.ceil(self.window_s / MINUTE_S), 1)


def floor_to(moment: datetime, step_s: int) -> datetime:
    epoch_s = int(moment.timestamp())
    return datetime.fromtimestamp(epoch_s - epoch_s % step_s, UTC)


def cell_step_s(time_range: TimeRange) -> int:
    return MINUTE_S if time_range.length <= MINUTE_STEP_MAX_WINDOW else HOUR_S


async def watermark(conn: asyncpg.Connection, source: str) -> datetime | None:
    """Every minute before this one is rolled up for ``source`` (None: no rollup yet)."""
    return await conn.fetchval(
        "SELECT minute_until FROM rollup_watermarks WHERE source = $1", source)


async def first_sample_at(
    conn: asyncpg.Connection, server_ids: tuple[str, ...] | None
) -> datetime | None:
    """The first sample ``server_ids`` (None: every server) hold; None when they have none.
    ``servers`` holds one row per host, so this is cheap next to the query it bounds."""
    if server_ids is None:
        return await conn.fetchval("SELECT min(first_seen_at) FROM servers")
    return await conn.fetchval(
        "SELECT min(first_seen_at) FROM servers WHERE server_id = ANY($1::text[])",
        list(server_ids))


def starting_at(time_range: TimeRange, start: datetime | None) -> TimeRange:
    """``time_range`` cut to begin at ``start`` when that is later; never past its end."""
    if start is None or start <= time_range.start:
        return time_range
    return TimeRange(min(start, time_range.end), time_range.end, time_range.hours)


def ceil_to(moment: datetime, step_s: int) -> datetime:
    floor = floor_to(moment, step_s)
    return floor if floor == moment else floor + timedelta(seconds=step_s)


def _horizon(now: datetime, days: float | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


async def plan_query(
    conn: asyncpg.Connection, time_range: TimeRange, source: str,
    server_ids: tuple[str, ...] | None, *, step_s: int | None = None, path: str | None = None,
    now: datetime | None = None, retention_days: float | None = None,
    rollup_retention_days: tuple[float, float] | None = None,
) -> Plan:
    """The plan of a query over ``time_range``; ``path`` forces raw or rollup (the rollup
    falls back to raw when it has no watermark at all).

    The window starts no earlier than the retention horizon of the tier that serves it
    (``retention_days``: the raw samples', None: none; ``rollup_retention_days``: (minute,
    hour) cells', None: as the raw samples) and the first sample. A requested start (or the
    horizon) is widened to whole steps (a rollup cell cannot be split); a later first sample
    is the start as is. The end is cut at the data's horizon: ``now`` for the raw path, the
    watermark for the rollup path."""
    now = now or datetime.now(UTC)
    minute_days, hour_days = rollup_retention_days or (retention_days, retention_days)
    first = await first_sample_at(conn, server_ids)
    mark = await watermark(conn, source)
    forced_step = step_s

    def bounded(horizon: datetime | None) -> tuple[TimeRange, TimeRange]:
        """(the window cut at ``horizon``, the same cut at the first sample too)"""
        requested = starting_at(time_range, horizon)
        return requested, starting_at(requested, first)

    if path != "raw" and mark is not None:  # the rollups first: they reach furthest back
        requested, window = bounded(_horizon(now, hour_days))
        step_s = forced_step or cell_step_s(window)
        minute_horizon = _horizon(now, minute_days)
        if step_s == MINUTE_S and minute_horizon is not None and (
                window.start < minute_horizon):
            if forced_step is None:
                step_s = HOUR_S  # only hour cells are kept that far back
            else:
                requested, window = bounded(minute_horizon)
        start = floor_to(window.start, step_s)
        if path is None:
            usable = mark > start and mark >= window.end - MAX_ROLLUP_LAG
            if not usable:
                log.warning("rollup behind: reading raw samples", extra={"kv": {
                    "source": source, "watermark": mark.isoformat(),
                    "end": window.end.isoformat()}})
            path = "rollup" if usable else "raw"
    if path != "rollup" or mark is None:
        path = "raw"
        requested, window = bounded(_horizon(now, retention_days))
        step_s = forced_step or cell_step_s(window)
        start = floor_to(window.start, step_s)
    time_range = window
    effective_start = start if time_range is requested else time_range.start
    end = time_range.end
    if path == "rollup":
        end = min(ceil_to(end, step_s), mark)
    else:  # widen to the step only as far as samples can exist
        end = max(end, min(ceil_to(end, step_s), now))
    end = max(end, effective_start)
    return Plan(source=source, path=path, step_s=step_s, start=effective_start, end=end,
                server_ids=server_ids, fleet=path == "rollup" and server_ids is None,
                read_start=None if effective_start == start else start)
