"""What bench_fleet.py measures: CPU per component from /proc, the backlog from Redis, and
throughput and latency from PostgreSQL's commit timestamps.

Latency collected → queryable is exact per report, with no polling: the server runs with
``track_commit_timestamp = on``, so ``pg_xact_commit_timestamp(xmin)`` of each row says when
it became visible; a report is queryable once its last row is, and its latency is that moment
minus its ``collected_at`` (both clocks are this box's). Rows landed per second come from the
same timestamps.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from ingest_gateway import stream

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return text[text.rindex(")") + 2:].split()


def tree_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system) of ``root_pid`` and all its live descendants, including
    the children each of them already reaped (cutime + cstime)."""
    parents: dict[int, int] = {}
    cpu: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        pid = int(entry.name)
        # After the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based.
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(v) for v in fields[11:15])
    members, frontier = {root_pid}, [root_pid]
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in members:
                members.add(child)
                frontier.append(child)
    return sum(cpu.get(pid, 0) for pid in members) / CLOCK_TICKS_PER_S


def box_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return (total - idle) / CLOCK_TICKS_PER_S, total / CLOCK_TICKS_PER_S


@dataclass
class CpuProbe:
    """CPU seconds of named process trees between ``start()`` and ``stop()``."""

    roots: dict[str, list[int]]
    _start: dict[str, float] = field(default_factory=dict)
    _box_start: tuple[float, float] = (0.0, 0.0)
    cores: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        return {name: sum(tree_cpu_s(pid) for pid in pids) for name, pids in self.roots.items()}

    def start(self) -> None:
        self._start = self._sample()
        self._box_start = box_cpu_s()

    def stop(self, wall_s: float) -> dict[str, float]:
        """Cores used by each tree over ``wall_s``, plus ``box`` (all processes) and
        ``other`` (what none of the trees used: other tenants of the machine)."""
        end = self._sample()
        busy, total = box_cpu_s()
        self.cores = {name: (end[name] - self._start[name]) / wall_s for name in end}
        cpus = os.cpu_count() or 1
        box_busy = (busy - self._box_start[0]) / (total - self._box_start[1]) * cpus
        self.cores["box"] = box_busy
        self.cores["other"] = max(0.0, box_busy - sum(v for k, v in self.cores.items()
                                                       if k != "box"))
        return self.cores


async def backlog(redis: Redis, shards: int) -> int:
    """Messages the ``digest`` group has not finished: lag + pending over the shards."""
    total = 0
    for shard in range(shards):
        try:
            groups = await redis.xinfo_groups(stream.sample_stream(shard))
        except Exception:  # no stream yet
            continue
        for group in groups:
            name = group.get("name")
            if name in (stream.GROUP, stream.GROUP.encode()):
                lag = group.get("lag")
                total += int(group.get("pending", 0)) + int(lag if lag is not None else 0)
    return total


_REPORTS_SQL = """
SELECT server_id, (extract(epoch FROM ts) * 1000000)::bigint AS ts_us,
       extract(epoch FROM max(pg_xact_commit_timestamp(xmin)))::float8 AS done_s,
       count(*) AS rows
FROM (SELECT i.server_id, p.ts, p.xmin FROM process_points p
      JOIN process_identities i ON i.key = p.key
      UNION ALL SELECT g.server_id, p.ts, p.xmin FROM process_group_points p
      JOIN process_groups g ON g.key = p.key) s
GROUP BY 1, 2
"""
_PER_SECOND_SQL = """
SELECT floor(extract(epoch FROM pg_xact_commit_timestamp(xmin)))::bigint AS s, count(*) AS n
FROM (SELECT xmin FROM process_points UNION ALL SELECT xmin FROM process_group_points) s
GROUP BY 1
"""


@dataclass
class Landed:
    """Per report: when its last row committed and how many rows it has; rows per second."""

    reports: dict[tuple[str, int], tuple[float, int]]
    rows_per_second: dict[int, int]

    def rows_between(self, start_s: float, end_s: float) -> int:
        return sum(n for s, n in self.rows_per_second.items() if start_s <= s < end_s)

    def latencies_s(self, start_s: float, end_s: float) -> list[float]:
        """collected → queryable of the reports collected in ``[start_s, end_s)``."""
        return [done - ts_us / 1e6 for (_sid, ts_us), (done, _n) in self.reports.items()
                if start_s <= ts_us / 1e6 < end_s]


async def landed(database_url: str) -> Landed:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET work_mem = '256MB'")
        reports = {(r["server_id"], r["ts_us"]): (r["done_s"], r["rows"])
                   for r in await conn.fetch(_REPORTS_SQL)}
        per_second = {r["s"]: r["n"] for r in await conn.fetch(_PER_SECOND_SQL)}
    finally:
        await conn.close()
    return Landed(reports, per_second)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, int(q * 1000) - 1)]


async def bytes_per_row(database_url: str, rows: int) -> float:
    """Disk used by the sample tables and identities (heap, TOAST, indexes) per row."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CHECKPOINT")
        used = await conn.fetchval(
            # pg_partition_tree lists nothing for a plain table: the identities are named
            "SELECT sum(pg_total_relation_size(relid)) FROM (SELECT relid FROM "
            "pg_partition_tree('process_points') UNION ALL SELECT relid FROM "
            "pg_partition_tree('process_group_points') UNION ALL "
            "SELECT 'process_identities'::regclass UNION ALL "
            "SELECT 'process_groups'::regclass) t")
    finally:
        await conn.close()
    return used / max(rows, 1)


def reference_loop_ms(iterations: int = 2_000_000, repeat: int = 3) -> float:
    """Milliseconds of one core for a fixed pure-Python loop (best of ``repeat``): the speed of
    this box, printed with the figures so runs on different machines can be compared (every
    stage of the pipeline is CPU-bound Python or C, so rows/s scale with it)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        total = 0
        for i in range(iterations):
            total += i
        best = min(best, time.process_time() - started)
    return best * 1000

