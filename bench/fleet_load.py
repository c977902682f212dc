"""Simulated agents: a fleet of hosts posting realistic reports to a real gateway.

Each simulated host (``bench/fleet_hosts.py``: ~300 processes and ~20 groups whose counters
move) has its own ``server_id`` and phase (random splay) and reports every ``interval_s`` on a
fixed grid, like ``procfleet agent``. Reports are gzipped and posted over keep-alive
connections by the small HTTP/1.1 client of ``bench/fleet_http.py``: the load generator shares
the box with the pipeline it measures, so its CPU per report is kept low.

Delivery follows the agent's rules, except that a simulated host never spools: transport
errors, 408, 429 and 5xx are retried with the *same bytes and report_id* (honouring
Retry-After) until ``give_up_after_s``; so every report is either acknowledged or counted as
given up, and a test can demand exactly its rows in the database afterwards. A host whose
delivery overran skips the slots it ate, like the agent.

Used by ``tests/e2e`` (in-process, a few hosts) and ``bench/bench_fleet.py`` (run as child
processes: ``python bench/fleet_load.py --help``), which reads the JSON-lines log of every
report (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench.fleet_hosts import SentReport, SimHost  # noqa: E402
from bench.fleet_http import HttpPool, HttpResponse, TransportError  # noqa: E402

REPORTS_PATH = "/v1/reports"
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 10.0
MAX_CONNECT_TIMEOUT_S = 5.0
GZIP_WBITS = 31  # zlib's window bits for a gzip header and trailer


@dataclass
class FleetOptions:
    """How the simulated fleet behaves."""

    gateway_url: str
    token: str
    hosts: int = 10
    interval_s: float = 15.0
    processes: int = 300
    groups: int = 20
    compress_level: int = 6  # the agent's gzip level; 0 sends identity
    duration_s: float = 60.0
    give_up_after_s: float = 120.0
    request_timeout_s: float = 10.0
    max_connections: int = 64
    server_id_prefix: str = "sim"
    seed: int = 1


@dataclass
class FleetStats:
    """Totals of a run; ``reports`` holds every report sent (in send order)."""

    reports: list[SentReport] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    skipped_slots: int = 0

    def acked(self) -> list[SentReport]:
        return [r for r in self.reports if r.acked]

    def summary(self) -> dict[str, int]:
        return {"reports": len(self.reports), "acked": len(self.acked()),
                "given_up": sum(r.given_up for r in self.reports),
                "duplicates": sum(r.duplicate for r in self.reports),
                "retried": sum(r.attempts > 1 for r in self.reports),
                "transport_errors": sum(r.transport_errors for r in self.reports),
                "mid_request_errors": sum(r.mid_request_errors for r in self.reports),
                "skipped_slots": self.skipped_slots}


class Fleet:
    """Runs ``options.hosts`` simulated hosts until ``stop()`` or ``duration_s``."""

    def __init__(self, options: FleetOptions, *, out: Path | None = None) -> None:
        self.options = options
        self.stats = FleetStats()
        self._stop = asyncio.Event()
        self._sleepers: set[asyncio.Future] = set()
        # report_id -> monotonic start of its attempt on the wire now (fault tests kill the
        # gateway while requests are in here).
        self.in_flight: dict[str, float] = {}
        self._out = open(out, "ab") if out else None  # noqa: SIM115 - closed in run()
        rng = random.Random(options.seed)
        now_s = time.time()
        self.hosts = [
            SimHost(f"{options.server_id_prefix}-{n:05d}", processes=options.processes,
                    groups=options.groups, rng=random.Random(rng.random()), now_s=now_s)
            for n in range(options.hosts)
        ]
        self._headers = {"Authorization": f"Bearer {options.token}",
                         "Content-Type": "application/json"}
        if options.compress_level:
            self._headers["Content-Encoding"] = "gzip"
        # One pool, its concurrency bounded here: waiting hosts queue on the semaphore (O(1)
        # per wake-up), and at most ``max_connections`` connections are ever open.
        self._http = HttpPool(options.gateway_url, self._headers,
                              timeout_s=options.request_timeout_s,
                              connect_timeout_s=min(MAX_CONNECT_TIMEOUT_S,
                                                    options.request_timeout_s))
        self._slots = asyncio.Semaphore(max(1, options.max_connections))

    def stop(self) -> None:
        """Finish the deliveries in progress and return from ``run`` (no new report)."""
        self._stop.set()
        for sleeper in self._sleepers:
            if not sleeper.done():
                sleeper.set_result(None)

    async def run(self) -> FleetStats:
        opts = self.options
        started = time.monotonic()
        try:
            rng = random.Random(opts.seed + 1)
            tasks = [asyncio.create_task(self._host_loop(host, started,
                                                         rng.uniform(0, opts.interval_s)))
                     for host in self.hosts]
            ender = asyncio.create_task(self._end_after(opts.duration_s))
            try:
                await asyncio.gather(*tasks)
            finally:
                ender.cancel()
                for task in tasks:
                    task.cancel()  # only left running when one host failed
        finally:
            await self._http.aclose()
            if self._out is not None:
                self._out.close()
        return self.stats

    async def _end_after(self, duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        self.stop()

    async def _sleep_until(self, deadline: float) -> None:
        # A future and a timer, woken early by stop(): asyncio.wait_for(event.wait()) costs a
        # task per sleep, which thousands of hosts pay on every report.
        delay = deadline - time.monotonic()
        if delay <= 0 or self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        sleeper = loop.create_future()
        timer = loop.call_later(delay, _wake, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)

    async def _host_loop(self, host: SimHost, started: float, splay_s: float) -> None:
        interval = self.options.interval_s
        level = self.options.compress_level
        first = started + splay_s
        k = 0
        await self._sleep_until(first)
        while not self._stop.is_set():
            sent, body = host.report(time.time())
            if level:
                # gzip with mtime 0: what gzip.compress(body, level, mtime=0) makes.
                body = zlib.compress(body, level, GZIP_WBITS)
            self.stats.reports.append(sent)
            await self._deliver(sent, body)
            if self._out is not None:
                self._out.write(orjson.dumps(sent) + b"\n")  # the dataclass' fields, in order
            k += 1
            behind = math.floor((time.monotonic() - first) / interval) + 1
            if behind > k:
                self.stats.skipped_slots += behind - k
                k = behind
            await self._sleep_until(first + k * interval)

    async def _deliver(self, sent: SentReport, body: bytes) -> None:
        deadline = time.monotonic() + self.options.give_up_after_s
        delay_s = 0.1
        while True:
            sent.attempts += 1
            response = await self._attempt(sent, body)
            retry_after: float | None = None
            if response is not None:
                self.stats.statuses[response.status_code] += 1
                if response.is_success:
                    sent.duplicate = response.status_code == 200
                    sent.acked_s = time.time()
                    return
                if response.status_code not in RETRYABLE_STATUSES:
                    raise AssertionError(f"report {sent.report_id} refused: "
                                         f"{response.status_code} {response.text[:300]}")
                with contextlib.suppress(ValueError):
                    retry_after = float(response.headers.get("retry-after", ""))
            if time.monotonic() >= deadline:
                sent.given_up = True
                return
            wait_s = min(retry_after, MAX_RETRY_AFTER_S) if retry_after is not None else delay_s
            await asyncio.sleep(wait_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, 2.0)

    async def _attempt(self, sent: SentReport, body: bytes) -> HttpResponse | None:
        """One POST; None when the transport failed (counted on ``sent``)."""
        async with self._slots:
            self.in_flight[sent.report_id] = time.monotonic()
            try:
                response = await self._http.post(REPORTS_PATH, body)
            except TransportError as exc:
                sent.transport_errors += 1
                if exc.sent:  # not a failed connect: the gateway may have the report
                    sent.mid_request_errors += 1
                sent.status = 0
                return None
            finally:
                self.in_flight.pop(sent.report_id, None)
        sent.status = response.status_code
        return response


def _wake(sleeper: asyncio.Future) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


def expected_rows(reports: Iterable[SentReport]) -> dict[str, dict[tuple[str, int], int]]:
    """Rows each table must hold, per ``(server_id, collected_at_us)``, for acked reports."""
    tables: dict[str, dict[tuple[str, int], int]] = {
        "process_samples": {}, "process_group_samples": {}, "snapshots": {}}
    for r in reports:
        if not r.acked:
            continue
        key = (r.server_id, r.collected_at_us)
        tables["process_samples"][key] = r.processes
        if r.groups:
            tables["process_group_samples"][key] = r.groups
        tables["snapshots"][key] = 1
    return tables


def read_reports(path: Path) -> list[SentReport]:
    """The reports logged by ``--out`` (one JSON object per line)."""
    with open(path, "rb") as fh:
        return [SentReport(**orjson.loads(line)) for line in fh if line.strip()]


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True, help="gateway base URL")
    parser.add_argument("--token-file", required=True, help="file holding an ingest token")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between reports")
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--compress-level", type=int, default=6, help="gzip level, 0 = none")
    parser.add_argument("--prefix", default="sim", help="server_id prefix (distinct per run)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per report")
    args = parser.parse_args()
    options = FleetOptions(
        gateway_url=args.gateway, token=Path(args.token_file).read_text().strip(),
        hosts=args.hosts, interval_s=args.interval, processes=args.processes,
        groups=args.groups, duration_s=args.duration, compress_level=args.compress_level,
        server_id_prefix=args.prefix, seed=args.seed)
    fleet = Fleet(options, out=args.out)
    # Building thousands of hosts takes seconds: the load starts now, tell the caller.
    print(orjson.dumps({"ready_at": time.time(), "hosts": len(fleet.hosts)}).decode(),
          flush=True)
    stats = asyncio.run(fleet.run())
    print(orjson.dumps({"pid": os.getpid(), **stats.summary(),
                        "statuses": {str(k): v for k, v in stats.statuses.items()}}).decode(),
          flush=True)
    return 0 if not any(r.given_up for r in stats.reports) else 1


if __name__ == "__main__":
    sys.exit(_main())
