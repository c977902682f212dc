"""Simulated hosts: the processes of one host, their counters, and the next report's bytes.

A ``SimHost`` keeps ~300 OS processes and ~20 process_exporter groups whose counters move
between reports the way a real host's do: CPU seconds grow at a per-process rate (most
processes idle, a few busy, a lognormal spread), resident memory drifts, and about one process
in 200 exits and is replaced by a new one (new pid and start time, counter from zero). A report
is the agent's JSON (``agent/contract.py``), built with orjson from dicts updated in place, so a
report costs well under a millisecond. Values have the precision the real sources print: ps
gives whole CPU seconds and one decimal of %CPU / %MEM, process_exporter's CPU counters move
in clock ticks (hundredths); the counters behind them keep full precision. ``SentReport`` is
what then happened to it.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

CHURN_PER_REPORT = 0.005  # share of processes replaced between two reports
HOST_MEMORY_BYTES = 16 * 1024**3
MIN_RSS_BYTES = 4096
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (name, user, command template, share of hosts' processes): a typical Linux server mix.
_PROGRAMS = (
    ("systemd", "root", "/sbin/init splash"),
    ("kworker/0:1", "root", ""),
    ("kworker/1:2", "root", ""),
    ("ksoftirqd/0", "root", ""),
    ("sshd", "root", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"),
    ("nginx", "www-data", "nginx: worker process"),
    ("postgres", "postgres", "postgres: 15/main: app appdb 10.0.0.{n}(5{n}12) idle"),
    ("python3", "app", "/usr/bin/python3 -m app.worker --queue q{n} --concurrency 4"),
    ("gunicorn", "app", "/srv/app/.venv/bin/gunicorn app.wsgi -w 8 -b 127.0.0.1:80{n}"),
    ("java", "kafka", "/usr/lib/jvm/java-17/bin/java -Xmx4g -cp /opt/kafka/libs/* Kafka{n}"),
    ("node", "app", "node /srv/web/server.js --port 30{n}"),
    ("redis-server", "redis", "/usr/bin/redis-server 127.0.0.1:6379"),
    ("containerd-shim", "root", "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {n}"),
    ("chronyd", "_chrony", "/usr/sbin/chronyd -F 1"),
    ("rsyslogd", "syslog", "/usr/sbin/rsyslogd -n -iNONE"),
    ("cron", "root", "/usr/sbin/cron -f -P"),
    ("dockerd", "root", "/usr/bin/dockerd -H fd:// --containerd=/run/containerd.sock"),
    ("bash", "deploy", "-bash"),
    ("process-exporter", "process-exporter", "/usr/bin/prometheus-process-exporter"),
    ("procfleet", "procfleet", "/opt/procfleet/bin/python -m procfleet agent"),
)


def iso_ms(epoch_s: float) -> str:
    """RFC 3339 with milliseconds and ``Z``: what the gateway stores to the microsecond."""
    moment = datetime.fromtimestamp(round(epoch_s, 3), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_us(rfc3339: str) -> int:
    """Exact microseconds since the epoch of an RFC 3339 timestamp (how rows are keyed)."""
    moment = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (moment - EPOCH) // timedelta(microseconds=1)


@dataclass
class SentReport:
    """What happened to one report (one JSON line of ``--out``)."""

    report_id: str
    server_id: str
    collected_at_us: int  # the report's collected_at, epoch microseconds (the row key)
    processes: int
    groups: int
    status: int = 0  # last HTTP status; 0 = never answered
    attempts: int = 0
    transport_errors: int = 0
    # Of those, the ones cut after the request was sent (gateway killed mid-request).
    mid_request_errors: int = 0
    duplicate: bool = False
    acked_s: float = 0.0  # epoch seconds of the 2xx
    given_up: bool = False

    @property
    def acked(self) -> bool:
        return 200 <= self.status < 300


class SimHost:
    """One simulated host: its processes and groups, and the next report's bytes.

    Per report only what moves is touched: every process's CPU counter and percentage, the
    RSS of a fifth of them, and the one or two that churn. The per-group totals (members,
    RSS, oldest start, CPU) are kept up to date alongside rather than recounted from the
    processes, so a report costs a few hundred microseconds of CPU: the load generator runs
    on the box it measures.
    """

    def __init__(self, server_id: str, *, processes: int = 300, groups: int = 20,
                 rng: random.Random | None = None, now_s: float | None = None) -> None:
        self.server_id = server_id
        self.rng = rng or random.Random(server_id)
        now_s = time.time() if now_s is None else now_s
        self.boot_s = now_s - self.rng.uniform(3 * 86400, 90 * 86400)
        self._next_pid = self.rng.randint(300, 5000)
        self.groups_wanted = max(0, groups)
        self.procs: list[dict] = []
        self.rates: list[float] = []  # CPU seconds per second of each process
        self.started: list[float] = []  # start time of each process, epoch seconds
        self.cpu_s: list[float] = []  # CPU seconds of each process, full precision
        # Per process name: the slots of its processes, their RSS sum, the slot of the oldest,
        # and the CPU its processes used since this host was made (kept after they exit).
        self._members: dict[str, list[int]] = {}
        self._group_rss: dict[str, int] = {}
        self._oldest: dict[str, int] = {}
        self.group_cpu: dict[str, float] = {}
        for _ in range(processes):
            self._spawn(now_s, started_s=self.rng.uniform(self.boot_s, now_s - 60))
        self.host_doc = {"server_id": server_id, "hostname": f"{server_id}.sim.example",
                         "os_type": "linux", "os_version": "6.8.0-45-generic",
                         "agent_version": "0.1.0-sim"}
        self.last_s = now_s
        self.reports = 0

    def _spawn(self, now_s: float, started_s: float | None = None, slot: int | None = None):
        rng = self.rng
        name, user, command = rng.choice(_PROGRAMS)
        self._next_pid = self._next_pid + rng.randint(1, 40)
        if self._next_pid > 4_000_000:
            self._next_pid = 300
        started_s = now_s if started_s is None else started_s
        age_s = max(1.0, now_s - started_s)
        # Most processes idle, a few busy: a lognormal rate, capped at two cores.
        rate = min(2.0, rng.lognormvariate(-6.0, 2.0))
        rss = min(int(rng.lognormvariate(17.0, 1.5)), HOST_MEMORY_BYTES // 4)
        cpu_s = rate * age_s * rng.uniform(0.5, 1.5)
        proc = {
            "pid": self._next_pid,
            "ppid": 1 if rng.random() < 0.6 else rng.randint(2, 5000),
            "user": user,
            "name": name,
            "command": command.format(n=rng.randint(0, 99)),
            "state": "R" if rate > 0.2 else "S",
            "start_time": iso_ms(started_s),
            "cpu_seconds_total": float(int(cpu_s)),  # ps prints whole seconds
            "cpu_percent": 0.0,
            "memory_percent": _memory_percent(rss),
            "rss_bytes": rss,
            "vsz_bytes": rss * rng.randint(2, 8),
        }
        if slot is None:
            slot = len(self.procs)
            self.procs.append(proc)
            self.rates.append(rate)
            self.started.append(started_s)
            self.cpu_s.append(cpu_s)
        else:
            self._leave(slot)
            self.procs[slot], self.rates[slot], self.started[slot] = proc, rate, started_s
            self.cpu_s[slot] = cpu_s
        self._join(slot)

    def _join(self, slot: int) -> None:
        proc = self.procs[slot]
        name = proc["name"]
        members = self._members.setdefault(name, [])
        members.append(slot)
        self._group_rss[name] = self._group_rss.get(name, 0) + proc["rss_bytes"]
        oldest = self._oldest.get(name)
        if oldest is None or self.started[slot] < self.started[oldest]:
            self._oldest[name] = slot
        self.group_cpu.setdefault(name, 0.0)

    def _leave(self, slot: int) -> None:
        proc = self.procs[slot]
        name = proc["name"]
        members = self._members[name]
        members.remove(slot)
        if not members:  # the group is gone from the report (its CPU total is kept)
            del self._members[name], self._group_rss[name], self._oldest[name]
            return
        self._group_rss[name] -= proc["rss_bytes"]
        if self._oldest[name] == slot:
            self._oldest[name] = min(members, key=self.started.__getitem__)

    def advance(self, now_s: float) -> None:
        """Move every counter to ``now_s``: CPU grows, memory drifts, a few processes churn."""
        dt = max(0.0, now_s - self.last_s)
        self.last_s = now_s
        rng = self.rng
        procs, rates, started = self.procs, self.rates, self.started
        # ~0.5 % of the processes exit and are replaced; a fifth of them change their RSS.
        for slot in rng.sample(range(len(procs)), int(len(procs) * CHURN_PER_REPORT
                                                      + rng.random())):
            self._spawn(now_s, slot=slot)
        self.reports += 1
        random_ = rng.random
        used = [rate * dt * (0.5 + random_()) for rate in rates]
        self.cpu_s = cpu_all = [cpu + used_s for cpu, used_s in zip(self.cpu_s, used, strict=True)]
        for proc, cpu, started_s in zip(procs, cpu_all, started, strict=True):
            proc["cpu_seconds_total"] = float(int(cpu))
            # Never above 300 % (rates are capped at two cores, noise at 1.5): no upper clamp.
            age_s = now_s - started_s
            proc["cpu_percent"] = round(100.0 * cpu / age_s if age_s > 1.0 else 100.0 * cpu, 1)
        group_cpu, group_rss = self.group_cpu, self._group_rss
        for name, members in self._members.items():
            group_cpu[name] += sum(map(used.__getitem__, members))
        percent_per_byte = 100.0 / HOST_MEMORY_BYTES
        for proc in procs[self.reports % 5 :: 5]:
            old = proc["rss_bytes"]
            rss = int(old * (0.95 + 0.1 * random_()))
            if rss < MIN_RSS_BYTES:
                rss = MIN_RSS_BYTES
            proc["rss_bytes"] = rss
            # Inlined _memory_percent: a call per process costs more than the arithmetic.
            percent = rss * percent_per_byte
            proc["memory_percent"] = round(percent, 1) if percent < 100.0 else 100.0
            group_rss[proc["name"]] += rss - old

    def report(self, now_s: float) -> tuple[SentReport, bytes]:
        """The next report at ``now_s`` (counters advanced) and its JSON bytes."""
        self.advance(now_s)
        groups = self._groups()
        report_id = uuid.uuid4().hex
        collected = iso_ms(now_s)
        doc = {
            "report_id": report_id,
            "host": self.host_doc,
            "collected_at": collected,
            "process_groups": groups,
            "processes": self.procs,
            "snapshots": [{"source": "ps",
                           "sha256": hashlib.sha256(report_id.encode()).hexdigest(),
                           "process_count": len(self.procs), "unparsed_lines": 0}],
        }
        sent = SentReport(report_id, self.server_id, epoch_us(collected), len(self.procs),
                          len(groups))
        return sent, orjson.dumps(doc)

    def _groups(self) -> list[dict]:
        groups = []
        procs = self.procs
        for name in sorted(self._members)[: self.groups_wanted]:
            members = len(self._members[name])
            rss = self._group_rss[name]
            cpu = self.group_cpu[name] + 100.0  # monotonic, like process_exporter
            groups.append({
                "name": name, "num_procs": members,
                "cpu_user_seconds_total": round(cpu * 0.7, 2),
                "cpu_system_seconds_total": round(cpu * 0.3, 2),
                "memory_resident_bytes": rss, "memory_virtual_bytes": rss * 4,
                "memory_swapped_bytes": 0, "num_threads": 2 * members, "open_fds": 12 * members,
                "read_bytes_total": int(cpu * 1e6), "write_bytes_total": int(cpu * 4e5),
                # The oldest member's own start_time: iso_ms of the oldest start, made once.
                "oldest_start_time": procs[self._oldest[name]]["start_time"],
            })
        return groups


def _memory_percent(rss_bytes: int) -> float:
    return min(100.0, round(rss_bytes * (100.0 / HOST_MEMORY_BYTES), 1))
