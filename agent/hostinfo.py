"""Host identity: who a report comes from (``agent.contract.Host``).

``server_id`` is the stable identity of a host; the first source that yields a usable id wins:

1. the ``server_id`` setting (validated as is: a bad configured value is a ``ConfigError``);
2. ``/etc/machine-id``, then ``/var/lib/dbus/machine-id`` (Linux, systemd or dbus);
3. ``IOPlatformUUID`` from ``ioreg`` (macOS);
4. the registry value ``HKLM\\SOFTWARE\\Microsoft\\Cryptography\\MachineGuid`` (Windows);
5. a random id generated once and kept in ``state_file`` (so it survives restarts).

An OS machine id (sources 2-4) is never sent as is: ``man machine-id`` asks applications not to
expose it but to hash it with an application-specific key. ``app_specific_id`` does what
systemd's ``sd_id128_get_machine_app_specific()`` does (HMAC-SHA256 keyed by the machine id over
procfleet's fixed app id, cut to 128 bits as a version-4 UUID), so on a systemd host
``systemd-id128 machine-id --app-specific=<PROCFLEET_APP_ID>`` prints the same server_id.
``server_id_source = "machine-id-raw"`` keeps the raw id for fleets that already report by it.

Every side effect (files, the ``platform`` module, the hostname, running ``ioreg``, reading the
registry) goes through ``HostSources`` so tests build a host of any OS without one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import platform
import re
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.config import SERVER_ID_RE, SERVER_ID_SOURCE_RAW
from agent.errors import ConfigError
from agent.rows import Host, RowInvalid

if TYPE_CHECKING:
    from agent.contract import OsType
else:
    OsType = str

logger = logging.getLogger(__name__)

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
MAX_HOSTNAME_CHARS = 253
MAX_OS_VERSION_CHARS = 128
MAX_BOOT_ID_CHARS = 64
MAX_AGENT_VERSION_CHARS = 32
IOREG_TIMEOUT_S = 5.0
_IOREG_UUID_RE = re.compile(r'"IOPlatformUUID"\s*=\s*"([^"]+)"')
# procfleet's application id for app-specific machine ids: fixed forever, since changing it
# changes every host's server_id.
PROCFLEET_APP_ID = uuid.UUID("d31ba582fdf34595bf026201677e4bef")

_OS_TYPES: dict[str, OsType] = {
    "linux": "linux",
    "darwin": "darwin",
    "windows": "windows",
    "freebsd": "freebsd",
    "openbsd": "openbsd",
    "netbsd": "netbsd",
}


class PlatformFacade(Protocol):
    """The part of the ``platform`` module we use (the module itself satisfies it)."""

    def system(self) -> str: ...
    def release(self) -> str: ...
    def version(self) -> str: ...
    def mac_ver(self) -> tuple[str, tuple[str, str, str], str]: ...


def run_ioreg(argv: Sequence[str]) -> str:
    """Run a command and return its stdout ("" when it cannot run or fails)."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=IOREG_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def read_windows_machine_guid() -> str | None:
    """``MachineGuid`` from the registry; ``winreg`` exists only on Windows."""
    try:
        import winreg  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        with winreg.OpenKey(
            winreg.HKEY_LOCAL_MACHINE,
            r"SOFTWARE\Microsoft\Cryptography",
            0,
            winreg.KEY_READ | winreg.KEY_WOW64_64KEY,
        ) as key:
            value, _ = winreg.QueryValueEx(key, "MachineGuid")
    except OSError:
        return None
    return str(value)


@dataclass(frozen=True)
class HostSources:
    """Where host facts come from; defaults read the real machine."""

    machine_id_paths: tuple[Path, ...] = (
        Path("/etc/machine-id"),
        Path("/var/lib/dbus/machine-id"),
    )
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")
    os_release_paths: tuple[Path, ...] = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
    platform: PlatformFacade = field(default_factory=lambda: platform)  # type: ignore[arg-type]
    hostname: Callable[[], str] = socket.gethostname
    run_command: Callable[[Sequence[str]], str] = run_ioreg
    read_machine_guid: Callable[[], str | None] = read_windows_machine_guid


def collect_host(
    *,
    server_id: str | None,
    agent_version: str,
    state_file: Path | None = None,
    sources: HostSources | None = None,
    server_id_source: str = "machine-id",
) -> Host:
    """Build the ``Host`` of this machine.

    ``state_file`` keeps a generated id when the OS offers none; without it such a host is a
    ``ConfigError`` asking for ``server_id``. Free-form facts (hostname, OS version) are
    cleaned and cut to the contract's bounds; identifiers are never altered, since a changed
    id would be a different host. An OS machine id is hashed (``app_specific_id``) unless
    ``server_id_source`` is ``"machine-id-raw"``.
    """
    sources = sources or HostSources()
    os_type = os_type_of(sources.platform.system())
    chosen_id, id_source = _server_id(server_id, os_type, state_file, sources)
    if id_source not in ("config", str(state_file)) and server_id_source != SERVER_ID_SOURCE_RAW:
        chosen_id, id_source = app_specific_id(chosen_id), f"{id_source} (app-specific hash)"
    hostname = _clean(sources.hostname(), MAX_HOSTNAME_CHARS)
    if not hostname:
        raise ConfigError("hostname", sources.hostname(), "the OS reports an empty hostname")
    if len(agent_version) > MAX_AGENT_VERSION_CHARS:
        raise ConfigError("agent_version", agent_version, "longer than 32 characters")
    boot_id = _read_first_line(sources.boot_id_path) if os_type == "linux" else None
    if boot_id is not None:
        boot_id = _clean(boot_id, MAX_BOOT_ID_CHARS) or None
    try:
        host = Host(
            server_id=chosen_id,
            hostname=hostname,
            os_type=os_type,
            os_version=_clean(_os_version(os_type, sources), MAX_OS_VERSION_CHARS),
            boot_id=boot_id,
            agent_version=agent_version,
        )
    except RowInvalid as exc:  # the cleaning above should make this unreachable
        raise ConfigError(exc.field, exc.value, exc.reason) from exc
    logger.info(
        "host identity",
        extra={"kv": {"server_id": host.server_id, "source": id_source, "os_type": os_type}},
    )
    return host


def app_specific_id(machine_id: str) -> str:
    """``machine_id`` hashed for procfleet, as ``sd_id128_get_machine_app_specific()`` does:
    32 lowercase hex digits that reveal nothing of the machine id. A 128-bit id (machine-id,
    IOPlatformUUID, MachineGuid) is keyed by its 16 bytes, like systemd; any other text by its
    UTF-8 bytes."""
    try:
        key = uuid.UUID(machine_id.strip("{}")).bytes
    except ValueError:
        key = machine_id.encode()
    digest = hmac.new(key, PROCFLEET_APP_ID.bytes, hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4).hex


def os_type_of(system: str) -> OsType:
    """Map ``platform.system()`` to the contract's ``OsType``."""
    name = system.strip().lower()
    if name.startswith(("cygwin", "msys", "mingw")):
        return "windows"
    return _OS_TYPES.get(name, "other")


def _server_id(
    configured: str | None, os_type: OsType, state_file: Path | None, sources: HostSources
) -> tuple[str, str]:
    if configured is not None:
        if not SERVER_ID_RE.fullmatch(configured):
            raise ConfigError(
                "server_id",
                configured,
                "must be 1-128 characters of letters, digits and . _ : @ -",
            )
        return configured, "config"
    for path in sources.machine_id_paths:
        found = _usable_id(_read_first_line(path), str(path))
        if found:
            return found, str(path)
    if os_type == "darwin":
        match = _IOREG_UUID_RE.search(
            sources.run_command(["ioreg", "-rd1", "-c", "IOPlatformExpertDevice"])
        )
        found = _usable_id(match.group(1) if match else None, "IOPlatformUUID")
        if found:
            return found, "IOPlatformUUID"
    if os_type == "windows":
        found = _usable_id(sources.read_machine_guid(), "MachineGuid")
        if found:
            return found, "MachineGuid"
    if state_file is None:
        raise ConfigError(
            "server_id", None, "no machine id found on this host: set server_id in the config"
        )
    return _persisted_id(state_file), str(state_file)


def _usable_id(value: str | None, source: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    # An image not yet booted has an empty machine-id or the word "uninitialized".
    if not value or value == "uninitialized":
        return None
    if not SERVER_ID_RE.fullmatch(value):
        logger.warning(
            "unusable machine id ignored", extra={"kv": {"source": source, "value": value[:80]}}
        )
        return None
    return value


def _persisted_id(state_file: Path) -> str:
    existing = _usable_id(_read_first_line(state_file), str(state_file))
    if existing:
        return existing
    new_id = uuid.uuid4().hex
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        # Temp file + rename: a crash never leaves a half-written id behind.
        fd, tmp = tempfile.mkstemp(dir=state_file.parent, prefix=".server-id-")
        with os.fdopen(fd, "w") as handle:
            handle.write(new_id + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, state_file)
    except OSError as exc:
        raise ConfigError("state_file", str(state_file), f"cannot store server id: {exc}") from exc
    logger.info("generated server id", extra={"kv": {"server_id": new_id, "path": state_file}})
    return new_id


def _os_version(os_type: OsType, sources: HostSources) -> str:
    facade = sources.platform
    if os_type == "linux":
        pretty = _os_release_pretty_name(sources.os_release_paths)
        kernel = facade.release()
        return f"{pretty} (kernel {kernel})" if pretty else kernel
    if os_type == "darwin":
        mac_version = facade.mac_ver()[0]
        return f"macOS {mac_version}" if mac_version else facade.release()
    if os_type == "windows":
        return f"Windows {facade.release()} {facade.version()}".strip()
    return facade.release()


def _os_release_pretty_name(paths: Sequence[Path]) -> str:
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "PRETTY_NAME":
                return value.strip().strip("\"'")
        return ""
    return ""


def _read_first_line(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline(4096).strip()
    except OSError:
        return None


def _clean(text: str, max_chars: int) -> str:
    return _CONTROL_RE.sub(" ", text).strip()[:max_chars].strip()
