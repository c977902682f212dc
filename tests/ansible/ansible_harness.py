"""What the Ansible tests share: paths, the ansible environment, playbook runs and their
PLAY RECAP, a wheel of this repository, a release archive, and the HTTP peer of a host (where
release archives come from, and a mock gateway that records reports).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
CONVERGE_PLAYBOOK = Path(__file__).with_name("converge.yml")
VENV_BIN = Path(sys.executable).parent
EXPORTER_BINARY = Path("/usr/bin/prometheus-process-exporter")
AGENT_USER = "pftest-agent"
EXPORTER_USER = "pftest-exporter"
ARCHIVE_NAME = "process-exporter-0.7.10.linux-amd64.tar.gz"
PACKAGE_SOURCES = (
    "pyproject.toml",
    "README.md",
    "agent",
    "ingest_gateway",
    "digest_worker",
    "migrations",
    "procfleet",
)
PLAYBOOK_TIMEOUT_S = 240
PEER_HOST_TOKEN = "pf_peerhost_HostTokenOfTheConvergedHost"
_RECAP_RE = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE
)


def ansible_env(ansible_home: Path) -> dict[str, str]:
    """Environment for ansible commands: this venv's tools first, state under ``ansible_home``."""
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_HOME=str(ansible_home),
        ANSIBLE_LOCAL_TEMP=str(ansible_home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(ansible_home / "remote-tmp"),
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def scratch_dir(prefix: str) -> Path:
    # Not pytest's tmp_path: it sits below a 0700 directory the agent's user could not enter.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class PlaybookRun:
    """One ``ansible-playbook`` run: exit code, output and the PLAY RECAP counters per host."""

    returncode: int
    output: str

    def recap(self, host: str = "localhost") -> dict[str, int]:
        for match in _RECAP_RE.finditer(self.output):
            if match.group(1) == host:
                ok, changed, unreachable, failed = map(int, match.groups()[1:])
                return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}
        raise AssertionError(f"no PLAY RECAP line for {host}:\n{self.output[-3000:]}")


class _PeerHandler(BaseHTTPRequestHandler):
    """GET /archives/<name> serves release archives; POST /v1/reports records a report;
    POST /v1/enroll records the enrollment and answers ``PEER_HOST_TOKEN``."""

    server: FleetPeer

    def do_GET(self) -> None:
        self._send_archive(with_body=True)

    def do_HEAD(self) -> None:  # get_url asks first in check mode
        self._send_archive(with_body=False)

    def _send_archive(self, *, with_body: bool) -> None:
        path = self.server.archive_dir / self.path.removeprefix("/archives/")
        if not self.path.startswith("/archives/") or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.posts.append((self.path, dict(self.headers), body))
        if self.path == "/v1/enroll":
            server_id = json.loads(gzip.decompress(body))["server_id"]
            payload = json.dumps({"token": PEER_HOST_TOKEN, "server_id": server_id}).encode()
            self.send_response(201)
        else:
            payload = json.dumps({"accepted": True}).encode()
            self.send_response(202 if self.path == "/v1/reports" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


class FleetPeer(ThreadingHTTPServer):
    """The HTTP peers of a host: where release archives come from, and the gateway."""

    def __init__(self, archive_dir: Path) -> None:
        super().__init__(("127.0.0.1", 0), _PeerHandler)
        self.archive_dir = archive_dir
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@dataclass
class Converged:
    """The outcome of converging ``converge.yml`` twice into ``root``, then a dry run
    (``--check --diff``) over the converged host."""

    root: Path
    host_vars: dict[str, object]
    peer: FleetPeer
    exporter_port: int
    first: PlaybookRun
    second: PlaybookRun
    dry_run: PlaybookRun

    @property
    def token(self) -> str:
        return str(self.host_vars["procfleet_agent_token"])


def build_wheel(dest: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of this repository's package sources."""
    src = dest / "src"
    for name in PACKAGE_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    (wheel,) = dest.glob("procfleet-*.whl")
    return wheel


def build_release_archive(dest: Path) -> tuple[Path, str]:
    """A process-exporter release tarball (top directory + binary) and its sha256."""
    if not EXPORTER_BINARY.exists():
        pytest.fail(f"{EXPORTER_BINARY} missing: apt-get install -y prometheus-process-exporter")
    archive = dest / ARCHIVE_NAME
    with tarfile.open(archive, "w:gz") as tar:
        top = ARCHIVE_NAME.removesuffix(".tar.gz")
        tar.add(EXPORTER_BINARY, arcname=f"{top}/process-exporter")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def run_playbook(inventory: Path, ansible_home: Path, *options: str) -> PlaybookRun:
    """``ansible-playbook [options] -i inventory converge.yml`` from the ansible directory."""
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            *options,
            "-i",
            str(inventory),
            str(CONVERGE_PLAYBOOK),
        ],
        cwd=ANSIBLE_DIR,
        env=ansible_env(ansible_home),
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT_S,
        check=False,
    )
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr)
