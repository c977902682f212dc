"""Ingest validation: the gateway's fast path (msgspec) against pydantic, on the same bodies.

    python bench/bench_validation.py [--reports 200] [--rounds 5]

The bodies are the fleet benchmark's simulated reports (bench/fleet_hosts.py: 300 processes and
20 groups, as an agent sends them, uncompressed). Per round, alternating, on every body:

- pydantic: ``Report.model_validate_json`` (the contract), then ``report_messages``;
- fast path: ``fast_contract.decode_report`` (msgspec types derived from the contract), then
  ``report_messages``: what ``POST /v1/reports`` does for a valid body.

Printed: CPU µs per report and per process row (best round) and the fast path against pydantic.
The process runs with the gateway's garbage-collector settings (``server.tune_gc``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.contract import Report  # noqa: E402
from bench.fleet_hosts import SimHost  # noqa: E402
from ingest_gateway.ingest.fast_contract import decode_report  # noqa: E402
from ingest_gateway.ingest.messages import report_messages  # noqa: E402
from ingest_gateway.server import tune_gc  # noqa: E402

ROWS_PER_REPORT = 320


def bodies(count: int) -> list[bytes]:
    now_s = time.time()
    hosts = [SimHost(f"bench-{n:04d}", now_s=now_s - 3600) for n in range(min(count, 50))]
    return [hosts[i % len(hosts)].report(now_s - 3600 + 15 * (i // len(hosts) + 1))[1]
            for i in range(count)]


def cpu_per_report_us(validate, payloads: list[bytes]) -> tuple[float, float]:
    """(validate only, validate + report_messages) in CPU µs per report."""
    started = time.process_time()
    reports = [validate(body) for body in payloads]
    validated = time.process_time()
    for report in reports:
        report_messages(report, shards=4, max_raw_output_bytes=1 << 20)
    done = time.process_time()
    return ((validated - started) / len(payloads) * 1e6,
            (done - started) / len(payloads) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tune_gc()
    payloads = bodies(args.reports)
    paths = {"pydantic": Report.model_validate_json, "fast path (msgspec)": decode_report}
    best: dict[str, tuple[float, float]] = {}
    for round_no in range(1, args.rounds + 1):
        for name, validate in paths.items():
            figures = cpu_per_report_us(validate, payloads)
            print(f"round {round_no}  {name:20s} validate {figures[0]:8.0f} us/report   "
                  f"+ messages {figures[1]:8.0f} us/report", flush=True)
            kept = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(kept[0], figures[0]), min(kept[1], figures[1]))
    size = sum(map(len, payloads)) / len(payloads)
    print(f"\n{args.reports} reports of {ROWS_PER_REPORT} rows ({size / 1024:.0f} KiB of JSON "
          f"each); CPU, best of {args.rounds} rounds")
    print(f"{'path':22s} {'validate us/row':>16s} {'+ messages us/row':>18s} "
          f"{'x pydantic':>11s}")
    base = best["pydantic"][1]
    for name, (validate_us, total_us) in best.items():
        print(f"{name:22s} {validate_us / ROWS_PER_REPORT:16.2f} "
              f"{total_us / ROWS_PER_REPORT:18.2f} {total_us / base:11.2f}")


if __name__ == "__main__":
    main()
