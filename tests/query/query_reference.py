"""A plain-Python reference of the top-processes computation, written from the rules in
README "## API" (and migrations/0002_rollups.sql), to check the SQL against.

Samples are dicts shaped like the table rows. Nothing here imports the code under test.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MAX_GAP = timedelta(seconds=120)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIB = 1024 * 1024


@dataclass
class Cell:
    samples: int = 0
    cpu_seconds: float = 0.0
    core_minutes: float = 0.0
    byte_minutes: float = 0.0
    peak_bytes: float = 0.0
    procs_minutes: float = 0.0


def minute_of(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _delta(value, previous):
    if value is None or previous is None:
        return None
    return value - previous if value >= previous else value


def group_cells(samples: list[dict], start: datetime, end: datetime) -> dict[tuple, Cell]:
    """Minute cells {(server_id, name, minute): Cell} of group samples in [start, end)."""
    series: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        if start - MAX_GAP <= s["ts"] < end:
            series[(s["server_id"], s["name"])].append(s)
    acc: dict[tuple, dict] = defaultdict(lambda: {"n": 0, "d": 0.0, "dt": 0.0, "rated": False,
                                                  "mem": [], "procs": []})
    for (server_id, name), rows in series.items():
        rows.sort(key=lambda r: r["ts"])
        previous = None
        for row in rows:
            cpu = row["cpu_user_seconds_total"] + row["cpu_system_seconds_total"]
            if row["ts"] >= start:
                a = acc[(server_id, name, minute_of(row["ts"]))]
                a["n"] += 1
                a["mem"].append(row["memory_resident_bytes"])
                a["procs"].append(row["num_procs"])
                if previous is not None and row["ts"] - previous[0] <= MAX_GAP:
                    a["d"] += _delta(cpu, previous[1])
                    a["dt"] += (row["ts"] - previous[0]).total_seconds()
                    a["rated"] = True
            previous = (row["ts"], cpu)
    cells = {}
    for key, a in acc.items():
        cells[key] = Cell(
            samples=a["n"], cpu_seconds=a["d"],
            core_minutes=a["d"] / a["dt"] if a["rated"] and a["dt"] else 0.0,
            byte_minutes=sum(a["mem"]) / len(a["mem"]), peak_bytes=max(a["mem"]),
            procs_minutes=sum(a["procs"]) / len(a["procs"]))
    return cells


def process_cells(samples: list[dict], start: datetime, end: datetime) -> dict[tuple, Cell]:
    """Minute cells of OS process samples: per series first, then summed per name."""
    series: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        if start - MAX_GAP <= s["ts"] < end:
            series[(s["server_id"], s["pid"], s["start_time"])].append(s)
    per_series: dict[tuple, dict] = defaultdict(lambda: {"n": 0, "d": None, "dt": 0.0,
                                                         "mem": []})
    for (server_id, pid, start_time), rows in series.items():
        rows.sort(key=lambda r: r["ts"])
        previous = None
        for row in rows:
            if row["ts"] >= start:
                key = (server_id, row["name"], minute_of(row["ts"]), pid, start_time)
                a = per_series[key]
                a["n"] += 1
                if row["rss_bytes"] is not None:
                    a["mem"].append(row["rss_bytes"])
                delta = dt = None
                if previous is not None:
                    if row["ts"] - previous[0] <= MAX_GAP:
                        delta = _delta(row["cpu_seconds_total"], previous[1])
                        dt = (row["ts"] - previous[0]).total_seconds()
                elif start_time > EPOCH and timedelta(0) <= row["ts"] - start_time <= MAX_GAP:
                    delta = row["cpu_seconds_total"]
                    dt = max((row["ts"] - start_time).total_seconds(), 1.0)
                if delta is not None:
                    a["d"] = (a["d"] or 0.0) + delta
                    a["dt"] += dt
            previous = (row["ts"], row["cpu_seconds_total"])
    cells: dict[tuple, Cell] = {}
    for (server_id, name, minute, _pid, _st), a in per_series.items():
        cell = cells.setdefault((server_id, name, minute), Cell())
        cell.samples += a["n"]
        cell.procs_minutes += 1
        if a["d"] is not None:
            cell.cpu_seconds += a["d"]
            if a["dt"]:
                cell.core_minutes += a["d"] / a["dt"]
        if a["mem"]:
            cell.byte_minutes += sum(a["mem"]) / len(a["mem"])
            cell.peak_bytes += max(a["mem"])
    return cells


def to_hours(cells: dict[tuple, Cell]) -> dict[tuple, Cell]:
    hours: dict[tuple, Cell] = {}
    for (server_id, name, minute), c in cells.items():
        h = hours.setdefault((server_id, name, minute.replace(minute=0)), Cell())
        h.samples += c.samples
        h.cpu_seconds += c.cpu_seconds
        h.core_minutes += c.core_minutes
        h.byte_minutes += c.byte_minutes
        h.peak_bytes = max(h.peak_bytes, c.peak_bytes)
        h.procs_minutes += c.procs_minutes
    return hours


def top(samples: list[dict], source: str, start: datetime, end: datetime, *, metric="cpu",
        limit=10, server_ids=None, step_s=None) -> list[dict]:
    """The ``processes`` list of the top endpoint for the effective window [start, end)
    (start already on the step grid)."""
    if server_ids is not None:
        samples = [s for s in samples if s["server_id"] in server_ids]
    step_s = step_s or (60 if end - start <= timedelta(hours=6) else 3600)
    cells = (group_cells if source == "groups" else process_cells)(samples, start, end)
    if step_s == 3600:
        cells = to_hours(cells)
    steps: dict[tuple, Cell] = {}
    servers: dict[str, set] = defaultdict(set)
    for (server_id, name, ts), c in cells.items():
        servers[name].add(server_id)
        s = steps.setdefault((name, ts), Cell())
        s.cpu_seconds += c.cpu_seconds
        s.core_minutes += c.core_minutes
        s.byte_minutes += c.byte_minutes
        s.peak_bytes += c.peak_bytes
        s.procs_minutes += c.procs_minutes
    window_s = (end - start).total_seconds()
    minutes = max(math.ceil(window_s / 60), 1)
    names: dict[str, dict] = {}
    for (name, ts), s in steps.items():
        if step_s == 60:
            slots = 1
        else:
            span = min(ts + timedelta(hours=1), end) - max(ts, start)
            slots = max(math.ceil(span.total_seconds() / 60), 1)
        n = names.setdefault(name, {"cpu": 0.0, "peak": 0.0, "mem": 0.0, "peak_mem": 0.0,
                                    "procs": 0.0})
        n["cpu"] += s.cpu_seconds
        n["peak"] = max(n["peak"], s.core_minutes / slots)
        n["mem"] += s.byte_minutes
        n["peak_mem"] = max(n["peak_mem"], s.peak_bytes)
        n["procs"] += s.procs_minutes
    order = "cpu" if metric == "cpu" else "mem"
    ranked = sorted(names.items(), key=lambda kv: (-kv[1][order], kv[0]))[:limit]
    return [{
        "name": name,
        "avg_cpu_percent": 100 * n["cpu"] / window_s,
        "peak_cpu_percent": 100 * n["peak"],
        "avg_memory_mb": n["mem"] / minutes / MIB,
        "peak_memory_mb": n["peak_mem"] / MIB,
        "avg_num_procs": n["procs"] / minutes,
        "servers": len(servers[name]),
    } for name, n in ranked]
