"""Simulated agents: a fleet of hosts posting realistic reports to a real gateway.

Each simulated host (``bench/fleet_hosts.py``: ~300 processes and ~20 groups whose counters
move) has its own ``server_id`` and phase (random splay) and reports every ``interval_s`` on a
fixed grid, like ``procfleet agent``. Reports are gzipped and posted with httpx.

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
import gzip
import math
import os
import random
import ssl
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

from bench.fleet_hosts import SentReport, SimHost  # noqa: E402

REPORTS_PATH = "/v1/reports"
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 10.0
CONNECTIONS_PER_CLIENT = 2


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


@dataclass
class _Lane:
    """One HTTP client and the requests it may have on the wire at once."""

    client: httpx.AsyncClient
    slots: asyncio.Semaphore

    def __init__(self, client: httpx.AsyncClient, connections: int) -> None:
        self.client, self.slots = client, asyncio.Semaphore(connections)


class Fleet:
    """Runs ``options.hosts`` simulated hosts until ``stop()`` or ``duration_s``."""

    def __init__(self, options: FleetOptions, *, out: Path | None = None) -> None:
        self.options = options
        self.stats = FleetStats()
        self._stop = asyncio.Event()
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

    def stop(self) -> None:
        """Finish the deliveries in progress and return from ``run`` (no new report)."""
        self._stop.set()

    async def run(self) -> FleetStats:
        opts = self.options
        # Many small clients rather than one big one: httpx' pool checks every connection of
        # a client on every request, so its CPU per request grows with the pool size.
        per_client = min(CONNECTIONS_PER_CLIENT, opts.max_connections)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        timeout = httpx.Timeout(opts.request_timeout_s, connect=min(5.0, opts.request_timeout_s))
        tls = ssl.create_default_context()  # loaded once, not once per client
        started = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as clients:
                lanes = [_Lane(await clients.enter_async_context(httpx.AsyncClient(
                    base_url=opts.gateway_url, limits=limits, timeout=timeout, verify=tls)),
                    per_client)
                    for _ in range(max(1, opts.max_connections // per_client))]
                rng = random.Random(opts.seed + 1)
                tasks = [asyncio.create_task(self._host_loop(
                    lanes[n % len(lanes)], host, started, rng.uniform(0, opts.interval_s)))
                    for n, host in enumerate(self.hosts)]
                ender = asyncio.create_task(self._end_after(opts.duration_s))
                await asyncio.gather(*tasks)
                ender.cancel()
        finally:
            if self._out is not None:
                self._out.close()
        return self.stats

    async def _end_after(self, duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        self.stop()

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0 and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _host_loop(self, client: _Lane, host: SimHost, started: float,
                         splay_s: float) -> None:
        interval = self.options.interval_s
        first = started + splay_s
        k = 0
        await self._sleep_until(first)
        while not self._stop.is_set():
            sent, body = host.report(time.time())
            if self.options.compress_level:
                body = gzip.compress(body, compresslevel=self.options.compress_level, mtime=0)
            self.stats.reports.append(sent)
            await self._deliver(client, sent, body)
            if self._out is not None:
                self._out.write(orjson.dumps(asdict(sent)) + b"\n")
            k += 1
            behind = math.floor((time.monotonic() - first) / interval) + 1
            if behind > k:
                self.stats.skipped_slots += behind - k
                k = behind
            await self._sleep_until(first + k * interval)

    async def _deliver(self, client: _Lane, sent: SentReport, body: bytes) -> None:
        deadline = time.monotonic() + self.options.give_up_after_s
        delay_s = 0.1
        while True:
            sent.attempts += 1
            response = await self._attempt(client, sent, body)
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
                    retry_after = float(response.headers.get("Retry-After", ""))
            if time.monotonic() >= deadline:
                sent.given_up = True
                return
            wait_s = min(retry_after, MAX_RETRY_AFTER_S) if retry_after is not None else delay_s
            await asyncio.sleep(wait_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, 2.0)

    async def _attempt(self, lane: _Lane, sent: SentReport,
                       body: bytes) -> httpx.Response | None:
        """One POST; None when the transport failed (counted on ``sent``)."""
        # Queue here rather than in httpx' pool: its pool scans every waiter on every change,
        # which made a few thousand waiting hosts cost more CPU than building the reports.
        async with lane.slots:
            return await self._post(lane.client, sent, body)

    async def _post(self, client: httpx.AsyncClient, sent: SentReport,
                    body: bytes) -> httpx.Response | None:
        self.in_flight[sent.report_id] = time.monotonic()
        try:
            response = await client.post(REPORTS_PATH, content=body, headers=self._headers)
        except httpx.RequestError as exc:
            sent.transport_errors += 1
            if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                sent.mid_request_errors += 1
            sent.status = 0
            return None
        finally:
            self.in_flight.pop(sent.report_id, None)
        sent.status = response.status_code
        return response


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
