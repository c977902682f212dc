"""The figures of one bench_fleet.py run (``Run``) and the side-by-side table it prints."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from bench.fleet_measure import percentile

P99_GOAL_S = 5.0
ROWS_PER_REPORT = 300 + 20  # fleet_hosts.SimHost's default processes + groups


@dataclass
class Run:
    """Figures of one pipeline."""

    name: str
    offered_reports_s: float
    duration_s: float
    rows_in_window: int = 0
    rows_accepted_in_window: int = 0
    reports_in_window: int = 0
    reports_landed_in_window: int = 0
    latencies_s: list[float] = field(default_factory=list)
    backlog_samples: list[int] = field(default_factory=list)
    backlog_end: int = 0
    drain_s: float | None = None
    complete: str = "-"
    cores: dict[str, float] = field(default_factory=dict)
    bytes_per_row: float = float("nan")

    @property
    def rows_per_s(self) -> float:
        return self.rows_in_window / self.duration_s

    @property
    def accepted_rows_per_s(self) -> float:
        return self.rows_accepted_in_window / self.duration_s


def _us_per_row(run: Run, *parts: str) -> float:
    """CPU microseconds per row of the named components: per row landed for the consumers
    and PostgreSQL, per row accepted for the gateways and Valkey."""
    cores = sum(run.cores.get(p, 0.0) for p in parts or ("workers", "postgres"))
    rows_s = run.accepted_rows_per_s if parts else run.rows_per_s
    return cores / max(rows_s, 1e-9) * 1e6


def print_results(runs: list[Run], args: argparse.Namespace) -> None:
    eng, naive = runs[0], runs[1] if len(runs) > 1 else None
    rows_per_report = ROWS_PER_REPORT

    def row(label: str, fmt, ratio: bool = False) -> None:
        """One line; ``ratio``: the better pipeline's advantage (engineered vs naive)."""
        values = [fmt(r) for r in runs]
        text = f"{label:<44}" + "".join(f"{v:>16}" for v in values)
        if ratio and naive is not None:
            a, b = (float(str(fmt(r)).replace(",", "")) for r in (eng, naive))
            lower_is_better = "CPU" in label
            better, worse = (b, a) if lower_is_better else (a, b)
            text += f"{better / worse:>10.1f}x" if worse else f"{'-':>11}"
        print(text)

    print(f"\n{'':<44}" + "".join(f"{r.name:>16}" for r in runs)
          + (f"{'ratio':>11}" if naive else ""))
    row("offered reports/s (hosts / interval)", lambda r: f"{r.offered_reports_s:,.1f}")
    row("measured window (s)", lambda r: f"{r.duration_s:g}")
    row("process rows/s accepted by the gateways", lambda r: f"{r.accepted_rows_per_s:,.0f}")
    row("process rows/s landed in PostgreSQL", lambda r: f"{r.rows_per_s:,.0f}", ratio=True)
    row("reports collected in window / landed", lambda r:
        f"{r.reports_in_window:,}/{r.reports_landed_in_window:,}")
    row("latency collected->queryable p50 (s)", lambda r: f"{percentile(r.latencies_s, .5):.2f}")
    row("latency collected->queryable p99 (s)", lambda r: f"{percentile(r.latencies_s, .99):.2f}")
    row("latency max (s)", lambda r: f"{max(r.latencies_s, default=float('nan')):.2f}")
    row("backlog in window: mean (messages)", lambda r:
        f"{sum(r.backlog_samples) / max(1, len(r.backlog_samples)):,.0f}")
    row("backlog in window: max (messages)", lambda r: f"{max(r.backlog_samples, default=0):,}")
    row("backlog when the load stopped", lambda r: f"{r.backlog_end:,}")
    row("drain after the load (s)", lambda r: "-" if r.drain_s is None else f"{r.drain_s:.1f}")
    row("acked reports complete in PostgreSQL", lambda r: r.complete)
    row("disk per process row (heap + indexes, B)", lambda r: f"{r.bytes_per_row:,.0f}")
    for name in ("gateway", "valkey", "workers", "postgres", "load generator", "other", "box"):
        label = "CPU cores: " + ("consumers" if name == "workers" else name)
        row(label, lambda r, n=name: f"{r.cores.get(n, float('nan')):.2f}")
    row("consumers + postgres CPU per row (us)", lambda r: f"{_us_per_row(r):.1f}",
        ratio=True)
    row("gateway + valkey CPU per row (us)", lambda r: f"{_us_per_row(r, 'gateway', 'valkey'):.1f}")
    # Capacity from CPU per row: ingest (gateways + Valkey) per accepted row, digest
    # (consumers + PostgreSQL) per landed row; both stages must run for every row.
    us_per_row = _us_per_row(eng, "gateway", "valkey") + _us_per_row(eng)
    cpus = os.cpu_count() or 1
    ceiling_rows_s = cpus / us_per_row * 1e6
    reports_s = eng.rows_per_s / rows_per_report
    kept_up = eng.backlog_end < eng.offered_reports_s * rows_per_report * 5 and (
        percentile(eng.latencies_s, .99) < P99_GOAL_S)
    print(f"\nengineered pipeline: {us_per_row:.1f} us of CPU per process row "
          f"({us_per_row * rows_per_report / 1000:.2f} ms per {rows_per_report}-row report)")
    print(f"hosts at a 15 s interval: {'kept up with' if kept_up else 'did NOT keep up with'} "
          f"{args.hosts:,} hosts every {args.interval:g} s; landed {reports_s * 15:,.0f} "
          f"hosts' worth; CPU ceiling with all {cpus} cores for the pipeline (agents "
          f"elsewhere): {ceiling_rows_s:,.0f} rows/s = "
          f"~{ceiling_rows_s / rows_per_report * 15:,.0f} hosts")
