"""Agent footprint: steady-state RSS and CPU per cycle of the real agent, side by side with
its baselines (the bare interpreter, one `ps` run, the real process_exporter it scrapes).

Runs `python -m procfleet agent` in a subprocess at a short interval against a stub gateway
(stdlib http.server, answers 202) and a real process_exporter on a free port (if installed),
with sleeping filler processes so the host has about ``--target-procs`` processes. CPU comes
from /proc/<pid>/stat (utime+stime, and cutime+cstime for the `ps` children it reaps), RSS
from /proc/<pid>/status (VmRSS). The work of one cycle does not depend on the interval, so
CPU per cycle measured at 1 s is what a 15 s interval pays per tick.

It then prints where the RSS goes: the agent's resident memory split into anonymous memory
(the Python heap) and file-backed pages (libpython, OpenSSL, pydantic-core's .so), and an
import ladder (cumulative RSS of a fresh interpreter importing the agent's stack one layer at a
time; a module shared by two layers is charged to the first).

    .venv/bin/python bench/bench_agent_footprint.py [--cycles 20] [--target-procs 300]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# `python -m` and `python -c` put the working directory first on sys.path: run from a checkout,
# the agent would import the checkout's packages, not the copy installed for --python.
NEUTRAL_CWD = tempfile.gettempdir()
GOAL_RSS_MB = 35.0
GOAL_CPU_PERCENT = 0.5
GOAL_INTERVAL_S = 15.0
EXPORTER_CONFIG = """\
process_names:
  - name: "{{.Comm}}"
    cmdline:
    - '.+'
"""


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    own = (int(rest[11]) + int(rest[12])) / CLK_TCK
    children = (int(rest[13]) + int(rest[14])) / CLK_TCK
    return own, children


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_split_mb(pid: int) -> dict[str, float]:
    """VmRSS split: anonymous vs file-backed, and the private (unshared) part, in MB."""
    split: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                value = int(line.split()[1])
                split[key] = value if key == "Threads" else value / 1024
    private_kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private_kb += int(line.split()[1])
    split["Private"] = private_kb / 1024
    return split


# The agent's stack, one layer at a time, in the order the layers depend on each other. The
# last layers are what the first request loads (httpcore's asyncio backend) and what only a
# retried send loads (tenacity).
IMPORT_LADDER: tuple[tuple[str, str], ...] = (
    ("interpreter (+ this probe's json)", ""),
    ("stdlib used by the agent", "import logging, argparse, json, gzip, subprocess, tomllib"),
    ("hashlib + ssl (OpenSSL)", "import hashlib, ssl"),
    ("asyncio", "import asyncio, asyncio.subprocess"),
    ("prometheus_client (+parser)", "import prometheus_client, prometheus_client.parser"),
    ("httpx", "import httpx"),
    ("httpcore, anyio, h11 (first request)", "import httpcore, anyio._backends._asyncio, h11"),
    ("agent.rows (the contract's light rows)", "import agent.rows"),
    ("rest of the agent + procfleet CLI", "import agent.runner, procfleet.cli\n"
     "procfleet.cli.build_parser()"),
    ("one SSL context (no CA bundle)", "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)"),
    ("tenacity (only when a send is retried)", "import tenacity"),
    # not imported by the agent since it builds agent.rows: what pydantic would add back
    ("pydantic + agent.contract (models built)", "import agent.contract"),
)

LADDER_PROBE = """
import json, sys
def rss_kb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
out = []
for code in json.loads(sys.argv[1]):
    try:
        exec(code)
    except ImportError:  # a layer an older agent does not have
        out.append(None)
        continue
    out.append(rss_kb())
print(json.dumps(out))
"""


def import_ladder(interpreter: list[str]) -> list[tuple[str, float | None]]:
    """Cumulative RSS (MB) after each layer of ``IMPORT_LADDER`` in a fresh interpreter."""
    codes = json.dumps([code for _, code in IMPORT_LADDER])
    out = subprocess.run([*interpreter, "-c", LADDER_PROBE, codes], cwd=NEUTRAL_CWD,
                         capture_output=True,
                         text=True, check=True, timeout=120)
    sizes = json.loads(out.stdout)
    return [(name, None if kb is None else kb / 1024)
            for (name, _), kb in zip(IMPORT_LADDER, sizes, strict=True)]


def count_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StubGateway:
    """POST /v1/reports -> 202; remembers (time, processes, groups, bytes) per report."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, int, int, int]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                doc = json.loads(gzip.decompress(body))
                with stub.lock:
                    stub.reports.append((time.monotonic(), len(doc["processes"]),
                                         len(doc["process_groups"]), len(body)))
                payload = b'{"accepted": true}'
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.reports)


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_exporter(workdir: Path) -> tuple[subprocess.Popen | None, str]:
    binary = shutil.which("prometheus-process-exporter") or shutil.which("process-exporter")
    if binary is None:
        return None, "http://127.0.0.1:9/metrics"  # closed port: the agent logs one warning
    config = workdir / "exporter.yml"
    config.write_text(EXPORTER_CONFIG)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-config.path", str(config), "-web.listen-address", f"127.0.0.1:{port}",
         "-threads=false", "-gather-smaps=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(answers, 15, "process_exporter")
    return proc, url


def ps_alone_cpu_ms(runs: int) -> float:
    """CPU of one run of the collector's own command (`env LC_ALL=C TZ=UTC0 ps -e -ww -o …`)."""
    from agent.collectors.process_table import PROCPS_PLAN

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        subprocess.run(list(PROCPS_PLAN.argv), stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used / runs * 1000


def idle_rss_mb(interpreter: list[str], code: str) -> float:
    """RSS of a Python process that ran ``code`` and then sleeps (an interpreter baseline)."""
    proc = subprocess.Popen([*interpreter, "-c", code + "\nimport time; time.sleep(30)"],
                            cwd=NEUTRAL_CWD)
    try:
        time.sleep(2.0)
        return rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="measured cycles")
    parser.add_argument("--warmup", type=int, default=3, help="cycles before measuring")
    parser.add_argument("--interval-s", type=float, default=1.0)
    parser.add_argument("--target-procs", type=int, default=300,
                        help="add sleeping processes until the host has this many")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the agent, e.g. of a venv with "
                        "`pip install procfleet` and no extras (default: this one)")
    parser.add_argument("--python-opt", action="append", default=[], metavar="OPT",
                        help="interpreter option for the agent, the import rows and the ladder, "
                        "e.g. --python-opt=-OO (repeatable)")
    args = parser.parse_args()
    interpreter = [args.python, *args.python_opt]

    workdir = Path(tempfile.mkdtemp(prefix="procfleet-bench-agent-"))
    fillers: list[subprocess.Popen] = []
    exporter = agent = None
    try:
        for _ in range(max(0, args.target_procs - count_processes())):
            fillers.append(subprocess.Popen(["sleep", "3600"]))
        exporter, exporter_url = start_exporter(workdir)
        procs_during = count_processes()
        gateway = StubGateway()
        config = workdir / "agent.toml"
        config.write_text(
            f'gateway_url = "{gateway.url}"\ntoken = "bench-token"\n'
            f"interval_s = {args.interval_s}\nsplay_s = 0\n"
            f'spool_dir = "{workdir / "spool"}"\nprocess_exporter_url = "{exporter_url}"\n'
        )
        log_path = workdir / "agent.log"
        with open(log_path, "wb") as log_file:
            agent = subprocess.Popen(
                [*interpreter, "-m", "procfleet", "agent", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=log_file, cwd=workdir,
            )
        wait_for(lambda: gateway.count() >= args.warmup or agent.poll() is not None, 60,
                 "warm-up reports")
        if agent.poll() is not None:
            raise SystemExit(f"agent exited early:\n{log_path.read_text()[-2000:]}")

        start_n = gateway.count()
        own0, kids0 = cpu_seconds(agent.pid)
        exp0 = sum(cpu_seconds(exporter.pid)) if exporter else 0.0
        rss_samples: list[float] = []
        while gateway.count() < start_n + args.cycles:
            rss_samples.append(rss_mb(agent.pid))
            time.sleep(0.1)
        end_n = gateway.count()
        own1, kids1 = cpu_seconds(agent.pid)
        exp1 = sum(cpu_seconds(exporter.pid)) if exporter else 0.0
        cycles = end_n - start_n
        exporter_rss = rss_mb(exporter.pid) if exporter else float("nan")
        agent_split = memory_split_mb(agent.pid)
        reports = gateway.reports[start_n:end_n]
        ps_ms = ps_alone_cpu_ms(20)  # while the filler processes still run
    finally:
        for proc in [agent, exporter, *fillers]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [agent, exporter, *fillers]:
            if proc is not None:
                proc.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)

    own_ms = (own1 - own0) / cycles * 1000
    kids_ms = (kids1 - kids0) / cycles * 1000
    total_ms = own_ms + kids_ms
    exporter_ms = (exp1 - exp0) / cycles * 1000
    bare_rss = idle_rss_mb([args.python], "pass")
    imports_rss = idle_rss_mb(interpreter, "import agent.runner, agent.report, httpx, ssl\n"
                              "ssl.create_default_context()")
    ladder = import_ladder(interpreter)
    rss_steady = statistics.median(rss_samples)
    rss_first, rss_last = rss_samples[0], rss_samples[-1]
    rss_max = max(rss_samples)
    cpu_percent_15s = total_ms / 1000 / GOAL_INTERVAL_S * 100

    print(f"host: {os.cpu_count()} cores, {procs_during} processes during the run; "
          f"reports carried {statistics.median(r[1] for r in reports):.0f} processes and "
          f"{statistics.median(r[2] for r in reports):.0f} exporter groups, "
          f"{statistics.median(r[3] for r in reports) / 1024:.1f} KiB gzip each")
    print(f"measured {cycles} cycles at interval_s={args.interval_s} after {args.warmup} warm-up; "
          f"RSS {rss_first:.1f} MB at the first measured cycle, {rss_last:.1f} MB at the last")
    print()
    print(f"{'figure':44s} {'agent':>10s} {'baseline':>10s} {'ratio':>7s}  baseline is")
    rows = [
        ("steady RSS, median (MB)", rss_steady, exporter_rss, "process_exporter RSS"),
        ("steady RSS, max (MB)", rss_max, bare_rss, "bare python RSS"),
        ("RSS of imports alone (MB)", imports_rss, bare_rss, "bare python RSS"),
        ("CPU per cycle, agent incl. ps (ms)", total_ms, ps_ms, "one ps run alone"),
        ("CPU per cycle, agent process only (ms)", own_ms, exporter_ms,
         "process_exporter per scrape"),
        ("CPU per cycle, reaped ps children (ms)", kids_ms, ps_ms, "one ps run alone"),
    ]
    for name, value, base, base_name in rows:
        ratio = value / base if base and base == base else float("nan")
        print(f"{name:44s} {value:10.1f} {base:10.1f} {ratio:6.2f}x  {base_name}")
    print()
    print(f"agent RSS at the end: {agent_split['VmRSS']:.1f} MB = anonymous "
          f"{agent_split['RssAnon']:.1f} (Python heap, OpenSSL and native allocations) "
          f"+ file-backed {agent_split['RssFile']:.1f} (shared libraries); private "
          f"{agent_split['Private']:.1f} MB; {agent_split['Threads']:.0f} thread(s)")
    print()
    print(f"{'import ladder (fresh interpreter)':44s} {'RSS MB':>10s} {'+MB':>7s}")
    previous = 0.0
    for name, cumulative in ladder:
        if cumulative is None:
            print(f"{name:44s} {'n/a':>10s}")
            continue
        print(f"{name:44s} {cumulative:10.1f} {cumulative - previous:+7.1f}")
        previous = cumulative
    print()
    cpu_verdict = "met" if cpu_percent_15s < GOAL_CPU_PERCENT else "MISSED"
    rss_verdict = "met" if rss_max <= GOAL_RSS_MB else "MISSED"
    print(f"at a {GOAL_INTERVAL_S:.0f} s interval: CPU {cpu_percent_15s:.3f} % of one core "
          f"(goal < {GOAL_CPU_PERCENT} %: {cpu_verdict}); "
          f"RSS {rss_max:.1f} MB (goal <= {GOAL_RSS_MB:.0f} MB: {rss_verdict})")


if __name__ == "__main__":
    main()
