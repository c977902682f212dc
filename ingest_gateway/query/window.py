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
    ``step_s`` 60|3600 (cell granularity), the effective ``[start, end)``, and ``fleet`` when
    the rollup's cross-server tables serve it."""

    source: str
    path: str
    step_s: int
    start: datetime
    end: datetime
    server_ids: tuple[str, ...] | None
    fleet: bool = False

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


def ceil_to(moment: datetime, step_s: int) -> datetime:
    floor = floor_to(moment, step_s)
    return floor if floor == moment else floor + timedelta(seconds=step_s)


async def plan_query(
    conn: asyncpg.Connection, time_range: TimeRange, source: str,
    server_ids: tuple[str, ...] | None, *, step_s: int | None = None, path: str | None = None,
    now: datetime | None = None,
) -> Plan:
    """The plan of a query over ``time_range``; ``path`` forces raw or rollup (the rollup
    falls back to raw when it has no watermark at all).

    The window is widened to whole steps (a rollup cell cannot be split) and then cut at the
    data's horizon: ``now`` for the raw path, the watermark for the rollup path."""
    step_s = step_s or cell_step_s(time_range)
    now = now or datetime.now(UTC)
    start = floor_to(time_range.start, step_s)
    end = time_range.end
    mark = await watermark(conn, source)
    if path is None:
        usable = mark is not None and mark > start and mark >= end - MAX_ROLLUP_LAG
        if mark is not None and not usable:
            log.warning("rollup behind: reading raw samples", extra={"kv": {
                "source": source, "watermark": mark.isoformat(), "end": end.isoformat()}})
        path = "rollup" if usable else "raw"
    if path == "rollup" and mark is None:
        path = "raw"
    if path == "rollup":
        end = min(ceil_to(end, step_s), mark)
    else:  # widen to the step only as far as samples can exist
        end = max(end, min(ceil_to(end, step_s), now))
    end = max(end, start)
    return Plan(source=source, path=path, step_s=step_s, start=start, end=end,
                server_ids=server_ids, fleet=path == "rollup" and server_ids is None)
