"""The real programs as child processes, over servers a test owns.

``Stack`` migrates the database (``migrations.runner.migrate``), creates one ingest and one
read token (``ingest_gateway.auth.TokenStore``) and starts ``python -m procfleet gateway``,
``... worker`` and ``... agent`` as children of the test, each logging JSON lines to its own
file. Every child is stopped by its pid (SIGTERM, then SIGKILL after a bound) when the test
ends, and every wait has a deadline. What the tests check afterwards is in ``checks.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from redis.asyncio import Redis

from ingest_gateway.auth import TokenStore
from migrations.runner import migrate
from procfleet.embedded import free_port
from tests.support.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
SHARDS = 4
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 30.0
T = TypeVar("T")

# Short waits everywhere: a test must see recoveries within seconds, not minutes.
GATEWAY_ENV = {
    "PROCFLEET_BACKLOG_REFRESH_S": "0.2",
    "PROCFLEET_RETRY_AFTER_S": "1",
    "PROCFLEET_TOKEN_REFRESH_S": "1",
    "PROCFLEET_SHUTDOWN_TIMEOUT_S": "5",
    "PROCFLEET_REDIS_STARTUP_WAIT_S": "20",
    "PROCFLEET_REDIS_TIMEOUT_S": "3",
}
WORKER_ENV = {
    "PROCFLEET_WORKER_BLOCK_MS": "500",
    "PROCFLEET_WORKER_BATCH_MAX_WAIT_MS": "50",
    "PROCFLEET_WORKER_SOCKET_TIMEOUT_S": "5",
    "PROCFLEET_WORKER_RETRY_MAX_DELAY_S": "1",
    "PROCFLEET_WORKER_CLAIM_IDLE_MS": "5000",
    "PROCFLEET_WORKER_SUMMARY_INTERVAL_S": "5",
}


class Program:
    """One ``python -m procfleet ...`` child of the test, logging JSON lines to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "procfleet", "--log-format", "json", *args]
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Program:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            log_file.write(orjson.dumps({"harness": "start", "run": self.runs}) + b"\n")
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.runs += 1
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM by pid and wait; SIGKILL if it does not exit in ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """kill -9 by pid: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def records(self, run: int | None = None) -> list[dict[str, Any]]:
        """The JSON log records of every run (or of run ``run`` only, counting from 0)."""
        out: list[dict[str, Any]] = []
        current = -1
        try:
            lines = self.log_path.read_bytes().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a traceback or a half-written line
            if not isinstance(doc, dict):
                continue
            if doc.get("harness") == "start":
                current = doc["run"]
                continue
            if run is None or current == run:
                out.append(doc)
        return out

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Stack:
    """Gateway, workers and agents of one test over ``redis_url`` / ``database_url``."""

    redis_url: str
    database_url: str
    work_dir: Path
    ingest_token: str = ""
    read_token: str = ""
    gateway_port: int = field(default_factory=free_port)
    programs: list[Program] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    async def prepare(self) -> Stack:
        """Apply the migrations and create the two tokens."""
        await migrate(self.database_url)
        redis = self.redis()
        try:
            store = TokenStore(redis)
            _, self.ingest_token = await store.create("ingest", "e2e agents")
            _, self.read_token = await store.create("read", "e2e reader")
        finally:
            await redis.aclose()
        return self

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url, protocol=2, socket_timeout=5,
                              socket_connect_timeout=5)

    def env(self, *layers: dict[str, str], **extra: str) -> dict[str, str]:
        # Nothing of the caller's procfleet settings leaks into the children.
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("PROCFLEET_") and k not in ("REDIS_URL", "DATABASE_URL")}
        env = {**base, "REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url,
               "PROCFLEET_SHARDS": str(SHARDS)}
        for layer in layers:
            env.update(layer)
        env.update(extra)
        return env

    def _add(self, name: str, args: list[str], env: dict[str, str]) -> Program:
        program = Program(name, args, env, self.work_dir / "logs" / f"{name}.log")
        self.programs.append(program)
        return program

    async def start_gateway(self, **env: str) -> Program:
        program = self._add("gateway", ["gateway", "--port", str(self.gateway_port)],
                            self.env(GATEWAY_ENV, env))
        await self.restart(program)
        return program

    async def restart(self, program: Program) -> None:
        """Start ``program`` again (same arguments); a gateway is awaited until ready."""
        program.start()
        if program.name.startswith("gateway"):
            await self.wait_ready(program)

    async def wait_ready(self, program: Program, timeout_s: float = START_TIMEOUT_S) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            async def ready() -> bool:
                if not program.alive:
                    raise AssertionError(f"gateway exited while starting:\n{program.tail()}")
                try:
                    return (await client.get(f"{self.gateway_url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(ready, "gateway ready", timeout_s=timeout_s)

    def start_worker(self, consumer: str, **env: str) -> Program:
        """One worker process with a fixed consumer name (a restart reads its own pending
        entries first)."""
        return self._add(f"worker-{consumer}", ["worker", "--no-migrate"],
                         self.env(WORKER_ENV, env, PROCFLEET_WORKER_CONSUMER=consumer)).start()

    def start_agent(self, server_id: str, spool_dir: Path, interval_s: float = 1.0,
                    **env: str) -> Program:
        """The real agent scraping this host with ps (no process_exporter)."""
        agent_env = self.env({
            "PROCFLEET_GATEWAY_URL": self.gateway_url,
            "PROCFLEET_TOKEN": self.ingest_token,
            "PROCFLEET_SERVER_ID": server_id,
            "PROCFLEET_INTERVAL_S": str(interval_s),
            "PROCFLEET_SPLAY_S": "0",
            "PROCFLEET_PROCESS_EXPORTER_URL": "",
            "PROCFLEET_SPOOL_DIR": str(spool_dir),
            "PROCFLEET_TIMEOUT_S": "3",
        }, env)
        return self._add(f"agent-{server_id}", ["agent"], agent_env).start()

    def stop_all(self) -> None:
        """Agents first, then the gateway, then the workers: each by its pid."""
        order = {"agent": 0, "gateway": 1, "worker": 2}
        for program in sorted(self.programs, key=lambda p: order.get(p.name.split("-")[0], 3)):
            program.stop()

    def diagnosis(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.proc.pid if p.proc else '-'}, "
                         f"alive={p.alive}):\n{p.tail()}" for p in self.programs)
