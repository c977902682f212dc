"""Simulated hosts: the processes of one host, their counters, and the next report's bytes.

A ``SimHost`` keeps ~300 OS processes and ~20 process_exporter groups whose counters move
between reports the way a real host's do: CPU seconds grow at a per-process rate (most
processes idle, a few busy, a lognormal spread), resident memory drifts, and about one process
in 200 exits and is replaced by a new one (new pid and start time, counter from zero). A report
is the agent's JSON (``agent/contract.py``), built with orjson from dicts updated in place, so a
report costs well under a millisecond. ``SentReport`` is what then happened to it.
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
    """One simulated host: its processes and groups, and the next report's bytes."""

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
        for _ in range(processes):
            self._spawn(now_s, started_s=self.rng.uniform(self.boot_s, now_s - 60))
        self.group_cpu: dict[str, float] = {}
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
        rss = int(rng.lognormvariate(17.0, 1.5))
        proc = {
            "pid": self._next_pid,
            "ppid": 1 if rng.random() < 0.6 else rng.randint(2, 5000),
            "user": user,
            "name": name,
            "command": command.format(n=rng.randint(0, 99)),
            "state": "R" if rate > 0.2 else "S",
            "start_time": iso_ms(started_s),
            "cpu_seconds_total": rate * age_s * rng.uniform(0.5, 1.5),
            "cpu_percent": 0.0,
            "memory_percent": 0.0,
            "rss_bytes": min(rss, HOST_MEMORY_BYTES // 4),
            "vsz_bytes": min(rss, HOST_MEMORY_BYTES // 4) * rng.randint(2, 8),
        }
        if slot is None:
            self.procs.append(proc)
            self.rates.append(rate)
            self.started.append(started_s)
        else:
            self.procs[slot], self.rates[slot], self.started[slot] = proc, rate, started_s

    def advance(self, now_s: float) -> dict[str, list]:
        """Move every counter to ``now_s`` (CPU grows, memory drifts, a few processes churn)
        and return, per process name, ``[processes, rss_bytes, oldest start]``."""
        dt = max(0.0, now_s - self.last_s)
        self.last_s = now_s
        rng = self.rng
        procs, rates, started, group_cpu = self.procs, self.rates, self.started, self.group_cpu
        # ~0.5 % of the processes exit and are replaced; a fifth of them change their RSS.
        for slot in rng.sample(range(len(procs)), int(len(procs) * CHURN_PER_REPORT
                                                      + rng.random())):
            self._spawn(now_s, slot=slot)
        self.reports += 1
        drifting = self.reports % 5
        random_ = rng.random
        by_name: dict[str, list] = {}
        for i in range(len(procs)):
            proc, started_s = procs[i], started[i]
            name = proc["name"]
            used = rates[i] * dt * (0.5 + random_())
            cpu = proc["cpu_seconds_total"] + used
            proc["cpu_seconds_total"] = cpu
            group_cpu[name] = group_cpu.get(name, 0.0) + used
            rss = proc["rss_bytes"]
            if i % 5 == drifting:
                rss = proc["rss_bytes"] = max(4096, int(rss * (0.95 + 0.1 * random_())))
            proc["cpu_percent"] = min(100_000.0, 100.0 * cpu / max(1.0, now_s - started_s))
            proc["memory_percent"] = min(100.0, 100.0 * rss / HOST_MEMORY_BYTES)
            group = by_name.get(name)
            if group is None:
                by_name[name] = [1, rss, started_s]
            else:
                group[0] += 1
                group[1] += rss
                if started_s < group[2]:
                    group[2] = started_s
        return by_name

    def report(self, now_s: float) -> tuple[SentReport, bytes]:
        """The next report at ``now_s`` (counters advanced) and its JSON bytes."""
        by_name = self.advance(now_s)
        groups = self._groups(by_name)
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

    def _groups(self, by_name: dict[str, list]) -> list[dict]:
        groups = []
        for name in sorted(by_name)[: self.groups_wanted]:
            procs, rss, oldest_s = by_name[name]
            cpu = self.group_cpu.get(name, 0.0) + 100.0  # monotonic, like process_exporter
            groups.append({
                "name": name, "num_procs": procs,
                "cpu_user_seconds_total": cpu * 0.7, "cpu_system_seconds_total": cpu * 0.3,
                "memory_resident_bytes": rss, "memory_virtual_bytes": rss * 4,
                "memory_swapped_bytes": 0, "num_threads": 2 * procs, "open_fds": 12 * procs,
                "read_bytes_total": int(cpu * 1e6), "write_bytes_total": int(cpu * 4e5),
                "oldest_start_time": iso_ms(oldest_s),
            })
        return groups
