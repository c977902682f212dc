"""Agent settings: a TOML file plus ``PROCFLEET_<KEY>`` environment overrides, validated once
by the one settings loader (``agent.settings_loader``).

``load_settings(path, environ)`` is the only place the agent reads its configuration; the
result (``AgentSettings``) is passed to everything else. Unknown keys in the file are an error
(a typo must not silently fall back to a default). The token is a ``Secret``: it never shows
in a repr, a log line, an error or ``describe()``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
_MAX_INTERVAL_S = 86_400.0


@dataclass(frozen=True)
class AgentSettings(Settings):
    """The agent's effective settings. Build it with ``load_settings``."""

    gateway_url: str | None = setting(
        None, "PROCFLEET_GATEWAY_URL", url("http", "https", strip_slash=True))
    token: Secret | None = setting(None, "PROCFLEET_TOKEN", SECRET)
    server_id: str | None = setting(  # None: detected (machine-id / MachineGuid)
        None, "PROCFLEET_SERVER_ID",
        text(pattern=SERVER_ID_PATTERN, reason="1-128 characters of A-Z a-z 0-9 . _ : @ -",
             blank_is_none=True))
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

    unset_shown: ClassVar[Mapping[str, str]] = {
        "server_id": "<detected>", "scrub_words": "<default>"}

    def check_together(self) -> None:
        if self.splay_s is not None and self.splay_s > self.interval_s:
            raise self.invalid("splay_s", "must not exceed interval_s")

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
        if self.token is None or not self.token.get_secret_value():
            raise ConfigError("token", "<unset>", "required to send reports")
        if self.spool_dir is None:
            raise ConfigError("spool_dir", None, "required to send reports")

    def describe(self) -> dict[str, object]:
        """The effective settings for the start log line, token masked."""
        return {**super().describe(), "splay_s": self.effective_splay_s}


KEYS = tuple(name for name in AgentSettings.__dataclass_fields__)


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
