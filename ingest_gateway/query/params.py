"""Query parameters of the read API: parsed once, validated, turned into small value objects.

Every refusal is a 400 naming the parameter, the reason and the offending value
(``errors.BadRequest``). Values are only ever passed to SQL as bind parameters; this module
bounds them so that a query stays cheap (at most 168 hours, 50 names, 1000 server ids).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.contract import MAX_TIMESTAMP, MIN_TIMESTAMP
from ingest_gateway.errors import BadRequest

METRICS = ("cpu", "memory")
SOURCES = ("groups", "processes")
PATHS = ("raw", "rollup")
MIN_HOURS, MAX_HOURS = 1, 168
MIN_LIMIT, MAX_LIMIT, DEFAULT_LIMIT = 1, 50, 10
MAX_SERVER_IDS = 1000
MAX_SERVER_ID_CHARS = 128
MAX_NAME_CHARS = 256
MIN_WINDOW = timedelta(minutes=1)
MAX_WINDOW = timedelta(hours=MAX_HOURS)
MIN_STEP_S = 60
MAX_POINTS = 1500
SERVER_ID_PARAMS = ("server_ids[]", "server_ids")
# A "+" of an unencoded offset arrives as a space ("...T10:00:00 00:00").
_SPACE_OFFSET = re.compile(r" (\d\d:\d\d)$")


@dataclass(frozen=True)
class TimeRange:
    """The requested window ``[start, end)``; ``hours`` when it was given as ``hours``."""

    start: datetime
    end: datetime
    hours: int | None = None

    @property
    def length(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True)
class TopParams:
    """``GET /api/processes/top``. ``server_ids`` None = every server; ``source`` None = auto."""

    time_range: TimeRange
    metric: str = "cpu"
    limit: int = DEFAULT_LIMIT
    server_ids: tuple[str, ...] | None = None
    source: str | None = None
    path: str | None = None  # raw | rollup; None = the planner's choice


@dataclass(frozen=True)
class SeriesParams:
    """``GET /api/processes/{name}/series``. ``step_s`` None = chosen from the window."""

    name: str
    time_range: TimeRange
    metric: str = "cpu"
    step_s: int | None = None
    server_ids: tuple[str, ...] | None = None
    source: str | None = None
    path: str | None = None


def bad(param: str, reason: str, value: Any = None) -> BadRequest:
    return BadRequest(param, reason, kind="bad_param", value=value)


def _one(query: Mapping[str, str], name: str) -> str | None:
    getall = getattr(query, "getall", None)
    values = getall(name, []) if getall is not None else (
        [query[name]] if name in query else [])
    if len(values) > 1:
        raise bad(name, "given more than once", values[:3])
    return values[0] if values else None


def parse_int(query: Mapping[str, str], name: str, low: int, high: int,
              default: int | None) -> int | None:
    raw = _one(query, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise bad(name, f"must be an integer between {low} and {high}", raw) from None
    if not low <= value <= high:
        raise bad(name, f"must be between {low} and {high}", value)
    return value


def parse_choice(query: Mapping[str, str], name: str, choices: tuple[str, ...],
                 default: str | None) -> str | None:
    raw = _one(query, name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise bad(name, f"must be one of {', '.join(choices)}", raw)
    return raw


def parse_timestamp(name: str, raw: str) -> datetime:
    """An RFC 3339 timestamp with a time zone (``2026-01-01T10:00:00Z``), as UTC."""
    text = _SPACE_OFFSET.sub(r"+\1", raw.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad(name, "must be an RFC 3339 timestamp, e.g. 2026-01-01T10:00:00Z",
                  raw) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise bad(name, "must carry a time zone (Z or +HH:MM)", raw)
    # Compared as instants before converting: 9999-12-31T23:59:59-23:59 is past year 9999 in
    # UTC, which Python's datetime cannot hold. The bounds are the report contract's.
    if not MIN_TIMESTAMP <= moment <= MAX_TIMESTAMP:
        raise bad(name, f"must be between {MIN_TIMESTAMP.isoformat()} and "
                  f"{MAX_TIMESTAMP.isoformat()}", raw)
    return moment.astimezone(UTC)


def parse_time_range(query: Mapping[str, str], now: datetime) -> TimeRange:
    """``hours`` (1–168, default 1, ending now) or ``from`` and ``to`` together."""
    start_raw, end_raw = _one(query, "from"), _one(query, "to")
    hours_raw = _one(query, "hours")
    if start_raw is None and end_raw is None:
        hours = parse_int(query, "hours", MIN_HOURS, MAX_HOURS, 1)
        assert hours is not None
        return TimeRange(now - timedelta(hours=hours), now, hours)
    if hours_raw not in (None, ""):
        raise bad("hours", "give either hours or from/to, not both", hours_raw)
    if start_raw is None or end_raw is None:
        missing = "from" if start_raw is None else "to"
        raise bad(missing, "from and to must be given together")
    start, end = parse_timestamp("from", start_raw), parse_timestamp("to", end_raw)
    if end - start < MIN_WINDOW:
        raise bad("to", "must be at least one minute after from", end_raw)
    if end - start > MAX_WINDOW:
        raise bad("from", f"the window may span at most {MAX_HOURS} hours", start_raw)
    return TimeRange(start, end)


def parse_server_ids(query: Mapping[str, str]) -> tuple[str, ...] | None:
    """``server_ids[]`` (or ``server_ids``), repeatable, or comma-separated; None when absent.
    Any text is accepted: an unknown id selects nothing."""
    getall = getattr(query, "getall", None)
    raw: list[str] = []
    for name in SERVER_ID_PARAMS:
        raw += getall(name, []) if getall is not None else (
            [query[name]] if name in query else [])
    if not raw:
        return None
    ids: list[str] = []
    for value in raw:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if len(part) > MAX_SERVER_ID_CHARS:
                raise bad("server_ids[]", f"a server id has at most {MAX_SERVER_ID_CHARS} "
                          "characters", part)
            if part not in ids:
                ids.append(part)
    if len(ids) > MAX_SERVER_IDS:
        raise bad("server_ids[]", f"at most {MAX_SERVER_IDS} server ids", len(ids))
    if not ids:
        raise bad("server_ids[]", "is empty")
    return tuple(ids)


def parse_top(query: Mapping[str, str], now: datetime) -> TopParams:
    """Parameters of the top endpoint (see the OpenAPI document)."""
    time_range = parse_time_range(query, now)
    return TopParams(
        time_range=time_range,
        metric=parse_choice(query, "metric", METRICS, "cpu") or "cpu",
        limit=parse_int(query, "limit", MIN_LIMIT, MAX_LIMIT, DEFAULT_LIMIT) or DEFAULT_LIMIT,
        server_ids=parse_server_ids(query),
        source=parse_choice(query, "source", SOURCES, None),
        path=parse_choice(query, "path", PATHS, None),
    )


def parse_name(raw: str) -> str:
    if not raw or len(raw) > MAX_NAME_CHARS:
        raise bad("name", f"must have 1 to {MAX_NAME_CHARS} characters", raw)
    return raw


def parse_series(name: str, query: Mapping[str, str], now: datetime) -> SeriesParams:
    """Parameters of the series endpoint; ``step`` in seconds, a multiple of 60."""
    time_range = parse_time_range(query, now)
    step_s = parse_int(query, "step", MIN_STEP_S, int(MAX_WINDOW.total_seconds()), None)
    if step_s is not None:
        if step_s % MIN_STEP_S:
            raise bad("step", "must be a multiple of 60 seconds", step_s)
        if time_range.length.total_seconds() / step_s > MAX_POINTS:
            raise bad("step", f"too small for this window: at most {MAX_POINTS} points",
                      step_s)
    return SeriesParams(
        name=parse_name(name),
        time_range=time_range,
        metric=parse_choice(query, "metric", METRICS, "cpu") or "cpu",
        step_s=step_s,
        server_ids=parse_server_ids(query),
        source=parse_choice(query, "source", SOURCES, None),
        path=parse_choice(query, "path", PATHS, None),
    )
