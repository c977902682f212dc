"""A realistic fleet day as stream messages, for bench/bench_storage.py.

Per host (``FleetDay.host_reports``), one report every ``interval_s``: a host message, a
snapshot (no raw output, the agent's default), the process_exporter groups and the OS
processes, each a stream row (ingest_gateway/stream.py COLUMNS) as the gateway enqueues it.

What makes it look like a real fleet rather than a synthetic grid:

- 32-character hex machine ids; command lines of ~90 characters (JVM flags, interpreters
  with scripts and options, kernel threads with short names);
- CPU at the precision the Linux collector reads from /proc: clock ticks (0.01 s);
  ``cpu_percent`` / ``memory_percent`` with ps's one decimal;
- mostly idle processes: 75 % idle (a tick now and then, RSS flat), 20 % light (a few ticks
  per interval, RSS moving a page or two), 5 % busy (a fraction of a core, RSS moving every
  sample, state flipping between R and S);
- churn: short-lived processes (cron jobs, ssh sessions, health checks) start every few
  intervals and live 1–40 intervals with new pids;
- a few restarts: ``restarts`` services per host per day get a new pid and start time, and
  their counters start again from zero.

Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

TICK_S = 0.01
PAGE = 4096
MEMORY_TOTAL = 16 * 1024**3

COMMANDS = (
    "/usr/lib/jvm/java-17-openjdk-amd64/bin/java -Xms512m -Xmx2g -XX:+UseG1GC -jar "
    "/opt/{name}/{name}-service.jar --spring.profiles.active=prod",
    "/usr/bin/python3 /opt/{name}/venv/bin/gunicorn --workers 4 --bind 127.0.0.1:8{n:03d} "
    "{name}.wsgi:application",
    "/usr/sbin/{name} -D -f /etc/{name}/{name}.conf --pidfile /run/{name}.pid --log-level "
    "info",
    "node /srv/{name}/dist/server.js --port 3{n:03d} --max-old-space-size=1024 "
    "--env=production",
    "/usr/local/bin/{name} --config.file=/etc/{name}/config.yml --storage.path=/var/lib/"
    "{name}",
)
KERNEL_THREADS = ("kworker/{n}:1-events", "ksoftirqd/{n}", "migration/{n}", "rcu_sched",
                  "kthreadd", "jbd2/sda1-8", "xfsaild/dm-{n}")
NAMES = ("nginx", "postgres", "redis-server", "sshd", "cron", "rsyslogd", "systemd-journald",
         "containerd", "dockerd", "kubelet", "node_exporter", "fluent-bit", "chronyd",
         "polkitd", "dbus-daemon", "java", "gunicorn", "node", "prometheus", "haproxy",
         "memcached", "consul", "vault", "telegraf", "filebeat", "auditd", "irqbalance")
USERS = ("root", "root", "root", "www-data", "postgres", "nobody", "app", "systemd-network")
SHORT = ("/bin/sh -c /usr/local/bin/healthcheck.sh --timeout 5 --service {name} "
         "--endpoint http://127.0.0.1:8080/health",
         "sshd: deploy@pts/{n} (session {n}) from 10.20.{n}.17 port 5{n:04d} forwarded "
         "agent",
         "/usr/bin/rsync -az --delete /var/lib/{name}/backup/ backup01:/srv/backup/{name}/ "
         "--bwlimit=20000")


@dataclass
class Proc:
    pid: int
    start: float
    name: str
    command: str
    user: str
    kind: str  # idle | light | busy
    cpu_ticks: int
    rss_pages: int
    vsz_pages: int
    ends_at: float | None = None
    state: str = "S"


@dataclass
class Host:
    server_id: str
    procs: list[Proc] = field(default_factory=list)
    next_pid: int = 2000
    groups: list[list] = field(default_factory=list)


class FleetDay:
    """``hosts`` hosts of ``processes`` processes and ``groups`` groups from ``start``."""

    def __init__(self, *, hosts: int, processes: int, groups: int, start: float,
                 interval_s: float = 15.0, restarts: int = 3, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.start, self.interval_s, self.restarts = start, interval_s, restarts
        self.hosts = [self._host(processes, groups) for _ in range(hosts)]

    def _host(self, processes: int, groups: int) -> Host:
        rng = self.rng
        host = Host(server_id=f"{rng.getrandbits(128):032x}")
        for _ in range(processes):
            host.procs.append(self._proc(host, self.start - rng.uniform(3600, 40 * 86400)))
        for g in range(groups):
            name = NAMES[g % len(NAMES)] + ("" if g < len(NAMES) else f"-{g}")
            host.groups.append([name, rng.randint(1, 8), rng.randint(0, 10**6),
                                rng.randint(0, 10**5), rng.randint(2000, 200000) * PAGE,
                                rng.choice((0.0, 0.05, 0.5, 2.0)), 0, 0])
        return host

    def _proc(self, host: Host, start: float, *, short: bool = False) -> Proc:
        rng = self.rng
        host.next_pid += rng.randint(1, 40)
        n = rng.randint(0, 99)
        name = rng.choice(NAMES)
        roll = rng.random()
        if short:
            kind, command = "light", rng.choice(SHORT).format(name=name, n=n)
        elif roll < 0.15:
            kind = "idle"
            name = rng.choice(KERNEL_THREADS).format(n=n % 8)
            command = f"[{name}]"
        else:
            kind = "idle" if roll < 0.75 else "light" if roll < 0.95 else "busy"
            command = rng.choice(COMMANDS).format(name=name, n=n)
        return Proc(pid=host.next_pid, start=round(start, 2), name=name, command=command,
                    user=rng.choice(USERS), kind=kind, cpu_ticks=rng.randint(0, 10**6),
                    rss_pages=0 if command.startswith("[") else rng.randint(500, 300_000),
                    vsz_pages=0 if command.startswith("[") else rng.randint(10**4, 10**6))

    def reports(self, intervals: int) -> Iterator[list[tuple[str, tuple]]]:
        """The messages of every host's report, interval by interval."""
        restart_every = max(int(86400 / self.interval_s / max(self.restarts, 1)), 1)
        for i in range(intervals):
            ts = self.start + i * self.interval_s
            for h, host in enumerate(self.hosts):
                self._advance(host, ts, i, restart_every, h)
                yield self._messages(host, ts, i)

    def _advance(self, host: Host, ts: float, i: int, restart_every: int, h: int) -> None:
        rng = self.rng
        alive = []
        for proc in host.procs:
            if proc.ends_at is not None and proc.ends_at <= ts:
                continue
            if proc.kind == "idle":
                proc.cpu_ticks += rng.random() < 0.1
                if rng.random() < 0.01:
                    proc.rss_pages += rng.choice((-1, 1))
            elif proc.kind == "light":
                proc.cpu_ticks += rng.randint(0, 10)
                if rng.random() < 0.3:
                    proc.rss_pages += rng.randint(-2, 3)
            else:
                proc.cpu_ticks += rng.randint(200, 1500)
                proc.rss_pages += rng.randint(-64, 96)
                proc.state = "R" if rng.random() < 0.5 else "S"
            alive.append(proc)
        host.procs = alive
        if rng.random() < 0.3:  # churn: a short-lived process
            proc = self._proc(host, ts - rng.uniform(0, self.interval_s), short=True)
            proc.cpu_ticks = 0
            proc.ends_at = ts + rng.randint(1, 40) * self.interval_s
            host.procs.append(proc)
        if self.restarts and (i + h * 37) % restart_every == restart_every - 1:
            victim = rng.randrange(len(host.procs))
            old = host.procs[victim]
            new = self._proc(host, ts - rng.uniform(0, self.interval_s))
            new.name, new.command, new.user, new.kind = old.name, old.command, old.user, old.kind
            new.cpu_ticks = 0
            host.procs[victim] = new
        for group in host.groups:
            busy = group[5]
            group[2] += int(busy * self.interval_s / TICK_S * rng.uniform(0.5, 1.5)) + (
                rng.random() < 0.2)
            group[3] += int(group[2] % 7 == 0)
            group[6] += rng.randint(0, 4096) if busy else 0
            group[7] += rng.randint(0, 50)

    def _messages(self, host: Host, ts: float, i: int) -> list[tuple[str, tuple]]:
        sid = host.server_id
        out: list[tuple[str, tuple]] = [
            ("h", (sid, ts, f"{sid[:8]}-{i}", f"host-{sid[:6]}.prod.example.com", "linux",
                   "6.8.0-45-generic", f"{sid[::-1]}", "0.3.0")),
            ("s", (sid, ts, "ps", f"{hash((sid, i)) & (2**256 - 1):064x}", len(host.procs),
                   0, None)),
        ]
        for name, procs, user, system, rss, _busy, io, switches in host.groups:
            out.append(("g", (sid, ts, name, procs, user * TICK_S, system * TICK_S, rss,
                              rss * 4, 0, procs * 3, procs * 12, io * 512, io * 256, 3,
                              io // 3, switches, switches // 10, self.start - 86400.0)))
        for p in host.procs:
            elapsed = max(ts - p.start, 1.0)
            out.append(("p", (sid, ts, p.pid, p.start, 1, p.user, p.name, p.command, p.state,
                              p.cpu_ticks * TICK_S,
                              round(100 * p.cpu_ticks * TICK_S / elapsed, 1),
                              round(100 * p.rss_pages * PAGE / MEMORY_TOTAL, 1),
                              p.rss_pages * PAGE, p.vsz_pages * PAGE, None, None, None)))
        return out
