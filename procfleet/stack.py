"""The whole pipeline on one machine: ``procfleet up``.

Servers: the ones named by ``REDIS_URL`` / ``DATABASE_URL``, or embedded Valkey (AOF on) and
PostgreSQL from pip wheels, with their data under one directory so the next ``up`` resumes.
Then migrations, two tokens (enroll for the local agent, read for people), and the three
programs as child processes — gateway, workers, agent — each logging to ``<data>/logs``.
Stopping (Ctrl-C / SIGTERM) goes downstream-last: agent, gateway, workers, then servers, so
whatever the gateway acknowledged is drained or kept in Redis for the next start. Killed with
``-9``, ``up`` takes every child with it (a parent-death signal, procfleet/lifetime.py).

Everything ``up`` writes is for its user only (umask 077): the servers' data, the spool, the
logs, ``stack.json`` with the tokens. The embedded servers' passwords reach the programs in
``REDIS_URL`` / ``DATABASE_URL``, which they mask in their log lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import ProcfleetError
from procfleet.embedded import EmbeddedPostgres, EmbeddedValkey, free_port, port_is_taken
from procfleet.lifetime import die_with_parent
from procfleet.private_root import PG_SYSTEM_USER

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0
CHILD_STOP_TIMEOUT_S = 30.0
PRIVATE_UMASK = 0o077


class StackError(ProcfleetError):
    """The local stack cannot start (the message says what to do)."""


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    port: int = 8080
    workers: int = 1
    agent: bool = True
    agent_interval_s: float = 15.0
    redis_url: str | None = None  # None: start embedded Valkey
    database_url: str | None = None  # None: start embedded PostgreSQL


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, umask=PRIVATE_UMASK,
                preexec_fn=die_with_parent(),
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(CHILD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time, killing it",
                        extra={"kv": {"child": self.name}})
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    options: StackOptions
    servers: list = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    redis_url: str = ""
    database_url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    postgres_data_dir: Path | None = None  # where the embedded cluster lives (as root: apart)

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        data_dir = self.options.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            probe = data_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StackError(f"data directory {data_dir} is not writable: {exc}") from exc
        if port_is_taken(self.options.port):
            raise StackError(f"port {self.options.port} is already taken: "
                             f"choose another with --port")
        self._start_servers()
        asyncio.run(self._prepare())
        self._start_children()

    def _start_servers(self) -> None:
        data_dir = self.options.data_dir
        if self.options.redis_url:
            self.redis_url = self.options.redis_url
        else:
            valkey = EmbeddedValkey(data_dir / "valkey", port=self._remembered_port("valkey"))
            valkey.start()
            self.servers.append(valkey)
            self.redis_url = valkey.url
        if self.options.database_url:
            self.database_url = self.options.database_url
        else:
            postgres = EmbeddedPostgres(data_dir / "postgres",
                                        port=self._remembered_port("postgres"))
            postgres.start()
            self.servers.append(postgres)
            self.database_url = postgres.url
            self.postgres_data_dir = postgres.data_dir
        self._write_env()

    def _env_path(self) -> Path:
        return self.options.data_dir / "env"

    def _write_env(self) -> None:
        """``<data>/env`` (0600): the servers' URLs with their passwords, for the procfleet
        commands an operator runs by hand (``. .procfleet/env; procfleet token list``)."""
        path = self._env_path()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"export REDIS_URL='{self.redis_url}'\n"
                         f"export DATABASE_URL='{self.database_url}'\n")
        tmp.chmod(0o600)
        tmp.replace(path)

    def _remembered_port(self, name: str) -> int:
        """The port this server had last time if it is free (URLs stay stable across ``up``)."""
        state = self._state()
        port = state.get("ports", {}).get(name)
        if not port or port_is_taken(port):
            port = free_port()
        state.setdefault("ports", {})[name] = port
        self._save_state(state)
        return port

    def _state_path(self) -> Path:
        return self.options.data_dir / "stack.json"

    def _state(self) -> dict:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict) -> None:
        path = self._state_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)  # holds the local tokens
        tmp.replace(path)

    async def _prepare(self) -> None:
        from ingest_gateway.auth import TokenStore, hash_token, split_token
        from ingest_gateway.ingest.cluster import open_client
        from migrations.runner import migrate

        applied = await migrate(self.database_url)
        log.info("migrations applied", extra={"kv": {"count": len(applied)}})
        redis = await open_client(self.redis_url, 10)  # REDIS_URL may name a cluster node
        try:
            store = TokenStore(redis)
            known = await store.load()
            state = self._state()
            tokens = state.get("tokens", {})
            for scope in ("enroll", "read"):
                token = tokens.get(scope)
                # The store is keyed by the token's public id; the secret must match too.
                record = known.get(split_token(token) or "") if token else None
                if record is None or record.revoked or record.sha256 != hash_token(token):
                    _, token = await store.create(scope, f"procfleet up ({scope})")
                tokens[scope] = token
            state["tokens"] = tokens
            self._save_state(state)
            self.tokens = tokens
        finally:
            await redis.aclose()

    def _start_children(self) -> None:
        opts = self.options
        base_env = {**os.environ, "REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url}
        logs = opts.data_dir / "logs"
        command = [sys.executable, "-m", "procfleet"]
        self.gateway_metrics_url = f"http://127.0.0.1:{opts.port}/metrics"
        self.worker_metrics_port = free_port()
        self.children = [
            Child("workers", [*command, "worker", "--concurrency", str(opts.workers),
                              "--metrics-port", str(self.worker_metrics_port)],
                  base_env, logs / "workers.log"),
            Child("gateway", [*command, "gateway", "--port", str(opts.port)],
                  base_env, logs / "gateway.log"),
        ]
        if opts.agent:
            agent_env = {
                **base_env,
                "PROCFLEET_GATEWAY_URL": f"http://127.0.0.1:{opts.port}",
                # The agent enrolls and writes only this host's data (no fleet-wide token).
                "PROCFLEET_ENROLL_TOKEN": self.tokens["enroll"],
                "PROCFLEET_SPOOL_DIR": str(opts.data_dir / "spool"),
                "PROCFLEET_INTERVAL_S": str(opts.agent_interval_s),
                "PROCFLEET_SPLAY_S": "0",
            }
            exporter_configured = "PROCFLEET_PROCESS_EXPORTER_URL" in os.environ
            if not exporter_configured and not _process_exporter_answers():
                # Scrape it only when one runs here; otherwise every tick would warn.
                agent_env["PROCFLEET_PROCESS_EXPORTER_URL"] = ""
                log.info("no process_exporter on 127.0.0.1:9256: the local agent reports "
                         "ps data only")
            self.children.append(Child("agent", [*command, "agent"], agent_env,
                                       logs / "agent.log"))
        for child in self.children:
            child.start()
            if child.name == "gateway":
                self._wait_for_gateway(child)

    def _wait_for_gateway(self, child: Child, timeout_s: float = 30.0) -> None:
        url = f"http://127.0.0.1:{self.options.port}/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not child.alive():
                raise StackError(f"the gateway exited while starting; log tail "
                                 f"({child.log_path}):\n{child.log_tail()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"the gateway did not answer {url} in {timeout_s}s; log tail:\n"
                         f"{child.log_tail()}")

    # -- run -------------------------------------------------------------------------------
    def banner(self) -> str:
        port = self.options.port
        read = self.tokens["read"]
        data = self.options.data_dir
        postgres = []
        if self.postgres_data_dir is not None and self.postgres_data_dir != data / "postgres":
            postgres = [f"  postgres  : {self.postgres_data_dir}  (run as root: PostgreSQL runs "
                        f"as {PG_SYSTEM_USER!r} and keeps its data there)"]
        return "\n".join([
            "procfleet is up.",
            f"  dashboard : http://127.0.0.1:{port}/#token={read}",
            f"  API       : curl -s -H 'Authorization: Bearer {read}' "
            f"'http://127.0.0.1:{port}/api/processes/top?metric=cpu&hours=1'",
            f"  metrics   : {self.gateway_metrics_url}  "
            f"http://127.0.0.1:{self.worker_metrics_port}/metrics",
            f"  data      : {data}  (logs in {data / 'logs'})",
            f"  commands  : . {self._env_path()}  (REDIS_URL, DATABASE_URL with their "
            f"passwords) then e.g. procfleet token list",
            *postgres,
            "  stop      : Ctrl-C",
        ])

    def watch(self, stop: list[bool]) -> int:
        """Print a status line every few seconds until ``stop[0]`` or a child dies."""
        previous: tuple[float, float, float] | None = None
        while not stop[0]:
            for child in self.children:
                if not child.alive():
                    print(f"\n{child.name} exited (code {child.proc.returncode}); log tail "
                          f"({child.log_path}):\n{child.log_tail()}", file=sys.stderr)
                    return 1
            now = time.monotonic()
            reports, rows, backlog = self._counters()
            if previous is not None:
                elapsed = now - previous[0]
                print(f"\rreports/s={(reports - previous[1]) / elapsed:7.2f}  "
                      f"rows/s={(rows - previous[2]) / elapsed:9.1f}  backlog={backlog:8.0f}  "
                      f"rows_total={rows:.0f}   ", end="", file=sys.stderr, flush=True)
            previous = (now, reports, rows)
            deadline = time.monotonic() + STATUS_INTERVAL_S
            while not stop[0] and time.monotonic() < deadline:
                time.sleep(0.2)
        print(file=sys.stderr)
        return 0

    def _counters(self) -> tuple[float, float, float]:
        gateway = _scrape(self.gateway_metrics_url)
        # Worker process i of N serves its metrics on worker_metrics_port + i.
        workers = [_scrape(f"http://127.0.0.1:{self.worker_metrics_port + i}/metrics")
                   for i in range(self.options.workers)]
        reports = _sum(gateway, "procfleet_gateway_reports_total")
        backlog = _sum(gateway, "procfleet_gateway_backlog_messages")
        rows = sum(_sum(text, "procfleet_worker_rows_inserted_total") for text in workers)
        return reports, rows, backlog

    def stop(self) -> None:
        for name in ("agent", "gateway", "workers"):
            for child in self.children:
                if child.name == name:
                    child.stop()
        for server in reversed(self.servers):
            server.stop()
        log.info("procfleet stopped", extra={"kv": {"data_dir": str(self.options.data_dir)}})


def _process_exporter_answers() -> bool:
    try:
        return httpx.get("http://127.0.0.1:9256/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _scrape(url: str) -> str:
    try:
        return httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return ""


def _sum(exposition: str, metric: str) -> float:
    """Sum of every sample named ``metric`` in an exposition text (all label sets); an
    unreadable text counts as no figure (the status line then shows 0)."""
    try:
        return sum(sample.value for family in text_string_to_metric_families(exposition)
                   for sample in family.samples if sample.name == metric)
    except ValueError:
        return 0.0


def run_stack(options: StackOptions) -> int:
    stack = Stack(options)
    stop = [False]

    def request_stop(signum, frame) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    os.umask(PRIVATE_UMASK)
    try:
        stack.start()
        print(stack.banner(), flush=True)
        return stack.watch(stop)
    finally:
        stack.stop()
