"""Host enrollment on the agent's side: trade the fleet's ``enroll_token`` for a host token once,
keep it, use it.

    HostTokenFile      <spool_dir>/host-token: {"server_id", "token"}, mode 0600, written
                       atomically (temp file, fsync, rename, fsync of the directory)
    EnrollingSender    a ``Sender`` look-alike: before the first report it reads the stored
                       host token, or enrolls (``POST /v1/enroll``, retried like a send) and
                       stores it; then it sends with that token

The spool directory is the agent's state directory: it is the one place the agent must be able
to write (the Ansible role's systemd unit allows nothing else). A stored token for another
``server_id`` is not used (the agent enrolls under its current one). When enrollment fails the
report goes to the spool like any undelivered report and the next tick tries again: a 409 (the
``server_id`` already has a host token) is logged with the command the operator must run. A
host token the gateway reports revoked (``procfleet host reset``) is forgotten, so the next
tick enrolls afresh.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import EnrollError, HostAlreadyEnrolled, ReportRejected
from agent.sender import REPORTS_PATH, GatewayAuthError, Sender, SendResult

log = logging.getLogger(__name__)

HOST_TOKEN_FILE = "host-token"
ENROLL_PATH = "/v1/enroll"
TEMP_PREFIX = ".tmp-"  # the spool removes what a crash leaves with this prefix
FILE_MODE = 0o600


@dataclass(frozen=True)
class HostToken:
    """This host's token and the ``server_id`` it is bound to."""

    server_id: str
    token: str

    def __repr__(self) -> str:  # the token stays out of any repr
        return f"HostToken(server_id={self.server_id!r})"


class HostTokenFile:
    """The stored host token of this agent (``<directory>/host-token``)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / HOST_TOKEN_FILE

    def read(self) -> HostToken | None:
        """The stored token, None when there is none or it is unreadable (then we enroll)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            stored = HostToken(server_id=doc["server_id"], token=doc["token"])
            if not (isinstance(stored.server_id, str) and isinstance(stored.token, str)):
                raise TypeError("server_id and token must be strings")
            if os.name != "nt" and self.path.stat().st_mode & 0o077:
                os.chmod(self.path, FILE_MODE)  # e.g. a copy restored with looser modes
                log.warning("host token file was readable by others: mode set to 0600",
                            extra={"kv": {"path": str(self.path)}})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("host token file unreadable, enrolling again",
                        extra={"kv": {"path": str(self.path), "error": type(exc).__name__}})
            return None
        return stored

    def write(self, host_token: HostToken) -> None:
        """Store ``host_token`` atomically, readable by this user only."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = directory / f"{TEMP_PREFIX}{HOST_TOKEN_FILE}-{os.getpid()}"
        data = json.dumps({"server_id": host_token.server_id, "token": host_token.token})
        # No symlink followed: the temp file is ours, created here.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                     FILE_MODE)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, FILE_MODE)  # whatever the umask or an older temp file had
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if os.name != "nt":
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def _token_of(result: SendResult, server_id: str) -> str:
    try:
        doc = json.loads(result.body)
        token = doc["token"]
    except (ValueError, KeyError, TypeError):
        raise EnrollError(f"the gateway's enrollment answer holds no token "
                          f"(HTTP {result.status})") from None
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise EnrollError(f"the gateway's enrollment answer holds no usable token "
                          f"(HTTP {result.status})")
    if doc.get("server_id") != server_id:
        raise EnrollError(f"the gateway enrolled server_id {doc.get('server_id')!r}, "
                          f"not {server_id!r}")
    return token


def _revoked(exc: GatewayAuthError) -> bool:
    """True for the gateway's 401 "token revoked" (not for a token it does not know yet)."""
    try:
        return exc.status == 401 and json.loads(exc.body)["error"]["reason"] == "token revoked"
    except (ValueError, KeyError, TypeError):
        return False


class EnrollingSender:
    """Sends reports with this host's own token, enrolling first when it has none.

    ``make_sender(path, token)`` builds the ``Sender`` (shared HTTP client, retry settings) for
    the enrollment and for the reports; tests pass one over an ``httpx.MockTransport``."""

    def __init__(
        self,
        make_sender: Callable[[str, str], Sender],
        enroll_token: str,
        *,
        server_id: str,
        hostname: str,
        token_file: HostTokenFile,
    ) -> None:
        self._make_sender = make_sender
        self._enroll_token = enroll_token
        self.server_id = server_id
        self.hostname = hostname
        self.token_file = token_file
        self._sender: Sender | None = None

    def __repr__(self) -> str:
        return f"EnrollingSender(server_id={self.server_id!r})"

    async def send_gzip(self, body: bytes, *, report_id: str = "",
                        max_attempts: int | None = None) -> SendResult:
        """Deliver one gzip report body with the host token (see ``Sender.send_gzip``); an
        ``EnrollError`` when there is no host token yet (the caller spools the report)."""
        sender = self._sender or await self._sender_with_host_token()
        try:
            return await sender.send_gzip(body, report_id=report_id, max_attempts=max_attempts)
        except GatewayAuthError as exc:
            if _revoked(exc):
                log.warning("host token revoked by the gateway (host reset): enrolling again "
                            "at the next tick", extra={"kv": {"server_id": self.server_id}})
                self.token_file.forget()
                self._sender = None
            raise

    async def _sender_with_host_token(self) -> Sender:
        stored = self.token_file.read()
        if stored is None or stored.server_id != self.server_id:
            stored = HostToken(self.server_id, await self.enroll())
            try:
                self.token_file.write(stored)
            except OSError as exc:
                # The token is ours now: use it for this run rather than lose the reports.
                log.error("host token not stored: it is used until the agent stops; after a "
                          "restart this host needs `procfleet host reset` to enroll again",
                          extra={"kv": {"path": str(self.token_file.path), "error": str(exc)}})
        self._sender = self._make_sender(REPORTS_PATH, stored.token)
        return self._sender

    async def enroll(self) -> str:
        """A new host token for this server, from ``POST /v1/enroll`` (retried like a send)."""
        body = json.dumps({"server_id": self.server_id, "hostname": self.hostname}).encode()
        enroller = self._make_sender(ENROLL_PATH, self._enroll_token)
        try:
            result = await enroller.send(body, report_id=f"enroll-{self.server_id}")
        except ReportRejected as exc:
            if exc.status == 409:
                error = HostAlreadyEnrolled(self.server_id)
                log.error("enrollment refused", extra={"kv": {"server_id": self.server_id,
                                                              "error": str(error)}})
                raise error from None
            raise EnrollError(f"the gateway refused to enroll {self.server_id!r}: "
                              f"HTTP {exc.status}: {exc.body[:200]}") from None
        token = _token_of(result, self.server_id)
        log.info("host enrolled", extra={"kv": {"server_id": self.server_id,
                                                "token_file": str(self.token_file.path)}})
        return token
