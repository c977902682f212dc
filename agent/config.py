"""Agent settings: a TOML file plus ``PROCFLEET_<KEY>`` environment overrides, validated once
by the one settings loader (``agent.settings_loader``).

``load_settings(path, environ)`` is the only place the agent reads its configuration; the
result (``AgentSettings``) is passed to everything else. Unknown keys in the file are an error
(a typo must not silently fall back to a default). The tokens are ``Secret``s: they never show
in a repr, a log line, an error or ``describe()``. ``token`` is a fleet-wide ingest token;
``enroll_token`` makes the agent enroll once and use its own host token instead
(``agent/enroll.py``), and wins when both are set.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from agent.errors import ConfigError
from agent.settings_loader import (
    BOOLEAN,
    SECRET,
    WORDS,
    Secret,
    Settings,
    integer,
    number,
    path,
    port,
    setting,
    text,
    url,
)

DEFAULT_PROCESS_EXPORTER_URL = "http://127.0.0.1:9256/metrics"
SERVER_ID_PATTERN = r"[A-Za-z0-9._:@-]{1,128}"  # the contract's Identifier (fullmatch)
SERVER_ID_RE = re.compile(SERVER_ID_PATTERN)
# How an OS machine id becomes the server_id: hashed with procfleet's app key (the default, as
# `man machine-id` asks), or the raw id (what agents sent before; keeps an existing fleet's ids).
SERVER_ID_SOURCE_HASHED = "machine-id"
SERVER_ID_SOURCE_RAW = "machine-id-raw"
SERVER_ID_SOURCES = (SERVER_ID_SOURCE_HASHED, SERVER_ID_SOURCE_RAW)
_MAX_INTERVAL_S = 86_400.0


@dataclass(frozen=True)
class AgentSettings(Settings):
    """The agent's effective settings. Build it with ``load_settings``."""

    gateway_url: str | None = setting(
        None, "PROCFLEET_GATEWAY_URL", url("http", "https", strip_slash=True))
    token: Secret | None = setting(None, "PROCFLEET_TOKEN", SECRET)
    # Set: enroll once, then use the host token stored in the spool directory.
    enroll_token: Secret | None = setting(None, "PROCFLEET_ENROLL_TOKEN", SECRET)
    server_id: str | None = setting(  # None: detected (machine-id / MachineGuid)
        None, "PROCFLEET_SERVER_ID",
        text(pattern=SERVER_ID_PATTERN, reason="1-128 characters of A-Z a-z 0-9 . _ : @ -",
             blank_is_none=True))
    server_id_source: str = setting(SERVER_ID_SOURCE_HASHED, "PROCFLEET_SERVER_ID_SOURCE",
                                    text(choices=SERVER_ID_SOURCES))
    interval_s: float = setting(15.0, "PROCFLEET_INTERVAL_S", number(1.0, _MAX_INTERVAL_S))
    splay_s: float | None = setting(  # None: up to one interval
        None, "PROCFLEET_SPLAY_S", number(0.0, _MAX_INTERVAL_S))
    process_exporter_url: str | None = setting(  # None / "": not scraped
        DEFAULT_PROCESS_EXPORTER_URL, "PROCFLEET_PROCESS_EXPORTER_URL",
        url("http", "https", blank_is_none=True))
    spool_dir: Path | None = setting(None, "PROCFLEET_SPOOL_DIR", path())  # None: default
    spool_max_mb: float = setting(100.0, "PROCFLEET_SPOOL_MAX_MB", number(0.01, 1024.0 * 1024))
    ca_file: Path | None = setting(None, "PROCFLEET_CA_FILE", path(must_exist=True))
    scrub_words: tuple[str, ...] | None = setting(  # None: the scrubber's defaults
        None, "PROCFLEET_SCRUB_WORDS", WORDS)
    max_processes: int = setting(0, "PROCFLEET_MAX_PROCESSES", integer(0, 20_000))  # 0: all
    pinned_names: tuple[str, ...] = setting((), "PROCFLEET_PINNED_NAMES", WORDS)
    keep_raw_output: bool = setting(False, "PROCFLEET_KEEP_RAW_OUTPUT", BOOLEAN)
    timeout_s: float = setting(10.0, "PROCFLEET_TIMEOUT_S", number(0.1, 600.0))
    metrics_port: int | None = setting(  # None: no /metrics listener
        None, "PROCFLEET_METRICS_PORT", port())
    metrics_addr: str = setting("127.0.0.1", "PROCFLEET_METRICS_ADDR", text())
    # The bearer token in clear text over http:// to another machine: refused unless this is
    # set (a lab, or TLS terminated by something on the way that the agent cannot see).
    allow_insecure_http: bool = setting(False, "PROCFLEET_ALLOW_INSECURE_HTTP", BOOLEAN)

    unset_shown: ClassVar[Mapping[str, str]] = {
        "server_id": "<detected>", "scrub_words": "<default>"}

    def check_together(self) -> None:
        if self.splay_s is not None and self.splay_s > self.interval_s:
            raise self.invalid("splay_s", "must not exceed interval_s")

    @property
    def insecure_http(self) -> bool:
        """True when reports (and the token) would go over plain http:// to a gateway that is
        not on this machine."""
        if not self.gateway_url:
            return False
        parts = urlsplit(self.gateway_url)
        return parts.scheme == "http" and not is_loopback(parts.hostname or "")

    @property
    def effective_splay_s(self) -> float:
        return self.interval_s if self.splay_s is None else self.splay_s

    @property
    def spool_max_bytes(self) -> int:
        return int(self.spool_max_mb * 1024 * 1024)

    def require_delivery(self) -> None:
        """Raise ``ConfigError`` unless these settings can deliver reports (--dry-run needn't)."""
        if not self.gateway_url:
            raise ConfigError("gateway_url", self.gateway_url, "required to send reports")
        if not any(t is not None and t.get_secret_value() for t in (self.token,
                                                                    self.enroll_token)):
            raise ConfigError("token", "<unset>", "required to send reports (or enroll_token, "
                              "to enroll this host and use its own host token)")
        if self.spool_dir is None:
            raise ConfigError("spool_dir", None, "required to send reports")
        if self.insecure_http and not self.allow_insecure_http:
            raise ConfigError(
                "gateway_url", self.gateway_url,
                "http:// to another machine would send the token in clear text: use https:// "
                "(ca_file for a private CA), or set allow_insecure_http = true "
                "(PROCFLEET_ALLOW_INSECURE_HTTP=true) to accept that")

    def describe(self) -> dict[str, object]:
        """The effective settings for the start log line, token masked."""
        return {**super().describe(), "splay_s": self.effective_splay_s}


KEYS = tuple(name for name in AgentSettings.__dataclass_fields__)


def is_loopback(hostname: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the
    machine."""
    name = hostname.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_spool_dir(environ: Mapping[str, str]) -> Path:
    """Where the spool lives when ``spool_dir`` is not set: under ``$PROCFLEET_DATA_DIR`` if
    set, else the platform's per-user state directory."""
    if environ.get("PROCFLEET_DATA_DIR"):
        return Path(environ["PROCFLEET_DATA_DIR"]) / "agent-spool"
    if os.name == "nt" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"]) / "procfleet" / "spool"
    state = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    return Path(state).expanduser() / "procfleet" / "spool"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("config", str(path), str(exc)) from None
    # An [agent] table is accepted too, so one file can hold several sections later.
    if set(data) == {"agent"} and isinstance(data["agent"], dict):
        data = data["agent"]
    return data


def load_settings(
    path: str | Path | None, environ: Mapping[str, str] | None = None
) -> AgentSettings:
    """Read ``path`` (optional), apply ``PROCFLEET_<KEY>`` overrides from ``environ`` and
    validate everything once. Raises ``ConfigError`` naming the key (or the variable), the value
    and the reason."""
    environ = {} if environ is None else environ
    settings = AgentSettings.load(environ, file_values=_read_toml(Path(path)) if path else None)
    if settings.spool_dir is None:
        settings = settings.with_overrides(spool_dir=default_spool_dir(environ))
    return settings
