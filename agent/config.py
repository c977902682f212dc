"""Agent settings: a TOML file plus ``PROCFLEET_<KEY>`` environment overrides, validated once.

``load_settings(path, environ)`` is the only place the agent reads its configuration; the
result (``AgentSettings``) is passed to everything else. Unknown keys in the file are an error
(a typo must not silently fall back to a default). The token is a ``SecretStr``: it never shows
in a repr, a log line or ``describe()``.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError

ENV_PREFIX = "PROCFLEET_"
DEFAULT_PROCESS_EXPORTER_URL = "http://127.0.0.1:9256/metrics"
SERVER_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")  # the contract's Identifier (fullmatch)
_MAX_INTERVAL_S = 86_400.0


class SecretStr:
    """A token that never shows in a repr, a log line or ``describe()`` (pydantic's SecretStr
    interface; the agent does not import pydantic, docs/BENCHMARKS.md "Agent footprint")."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __str__(self) -> str:
        return "**********"
# How an OS machine id becomes the server_id: hashed with procfleet's app key (the default, as
# `man machine-id` asks), or the raw id (what agents sent before; keeps an existing fleet's ids).
SERVER_ID_SOURCE_HASHED = "machine-id"
SERVER_ID_SOURCE_RAW = "machine-id-raw"
SERVER_ID_SOURCES = (SERVER_ID_SOURCE_HASHED, SERVER_ID_SOURCE_RAW)


@dataclass(frozen=True)
class AgentSettings:
    """The agent's effective settings. Build it with ``load_settings``."""

    gateway_url: str | None = None
    token: SecretStr | None = None
    server_id: str | None = None  # None: detected (machine-id / MachineGuid)
    server_id_source: str = SERVER_ID_SOURCE_HASHED
    interval_s: float = 15.0
    splay_s: float | None = None  # None: up to one interval
    process_exporter_url: str | None = DEFAULT_PROCESS_EXPORTER_URL  # None/"": not scraped
    spool_dir: Path | None = None  # None: default_spool_dir(environ)
    spool_max_mb: float = 100.0
    ca_file: Path | None = None
    scrub_words: tuple[str, ...] | None = None  # None: the scrubber's defaults
    max_processes: int = 0  # 0: every process
    pinned_names: tuple[str, ...] = ()
    keep_raw_output: bool = False
    timeout_s: float = 10.0
    metrics_port: int | None = None  # None: no /metrics listener
    metrics_addr: str = "127.0.0.1"

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
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "token":
                value = "***" if value is not None else "<unset>"
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif value is None:
                value = {"server_id": "<detected>", "scrub_words": "<default>"}.get(
                    f.name, "<unset>"
                )
            out[f.name] = value if isinstance(value, int | float | bool | str) else str(value)
        out["splay_s"] = self.effective_splay_s
        return out


def default_spool_dir(environ: Mapping[str, str]) -> Path:
    """Where the spool lives when ``spool_dir`` is not set: under ``$PROCFLEET_DATA_DIR`` if
    set, else the platform's per-user state directory."""
    if environ.get("PROCFLEET_DATA_DIR"):
        return Path(environ["PROCFLEET_DATA_DIR"]) / "agent-spool"
    if os.name == "nt" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"]) / "procfleet" / "spool"
    state = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    return Path(state).expanduser() / "procfleet" / "spool"


# --- converters: each takes a TOML value or an environment string -------------------------


def _float(low: float, high: float) -> Callable[[str, Any], float]:
    def convert(key: str, value: Any) -> float:
        if isinstance(value, bool):
            raise ConfigError(key, value, "expected a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, value, "expected a number") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ConfigError(key, value, f"must be between {low:g} and {high:g}")
        return number

    return convert


def _int(low: int, high: int) -> Callable[[str, Any], int]:
    def convert(key: str, value: Any) -> int:
        if isinstance(value, bool | float):
            raise ConfigError(key, value, "expected a whole number")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(key, value, "expected a whole number") from None
        if not low <= number <= high:
            raise ConfigError(key, value, f"must be between {low} and {high}")
        return number

    return convert


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(key, value, "expected true or false")


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, value, "expected a string")
    return value.strip()


def _http_url(key: str, value: Any) -> str | None:
    text = _text(key, value)
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, value, "expected an http:// or https:// URL")
    return text.rstrip("/") if key == "gateway_url" else text


def _token(key: str, value: Any) -> SecretStr | None:
    if not isinstance(value, str):
        # Never echo a token back, even a malformed one.
        raise ConfigError(key, "***", "expected a string")
    text = value.strip()
    if any(c.isspace() for c in text):
        raise ConfigError(key, "***", "must not contain whitespace")
    return SecretStr(text) if text else None


def _server_id(key: str, value: Any) -> str | None:
    text = _text(key, value)
    if text and not SERVER_ID_RE.fullmatch(text):
        raise ConfigError(key, value, "1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return text or None


def _server_id_source(key: str, value: Any) -> str:
    text = _text(key, value)
    if text not in SERVER_ID_SOURCES:
        raise ConfigError(key, value, f"expected one of {', '.join(SERVER_ID_SOURCES)}")
    return text


def _path(key: str, value: Any) -> Path | None:
    text = _text(key, value)
    return Path(text).expanduser() if text else None


def _existing_file(key: str, value: Any) -> Path | None:
    path = _path(key, value)
    if path is not None and not path.is_file():
        raise ConfigError(key, value, "file not found")
    return path


def _words(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # environment form: comma separated
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise ConfigError(key, value, "expected a list of strings (or a comma-separated string)")
    return tuple(w.strip() for w in items if w.strip())


def _optional_port(key: str, value: Any) -> int | None:
    port = _int(0, 65535)(key, value)
    return port or None


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "gateway_url": _http_url,
    "token": _token,
    "server_id": _server_id,
    "server_id_source": _server_id_source,
    "interval_s": _float(1.0, _MAX_INTERVAL_S),
    "splay_s": _float(0.0, _MAX_INTERVAL_S),
    "process_exporter_url": _http_url,
    "spool_dir": _path,
    "spool_max_mb": _float(0.01, 1024.0 * 1024),
    "ca_file": _existing_file,
    "scrub_words": _words,
    "max_processes": _int(0, 20_000),
    "pinned_names": _words,
    "keep_raw_output": _bool,
    "timeout_s": _float(0.1, 600.0),
    "metrics_port": _optional_port,
    "metrics_addr": _text,
}
KEYS = tuple(_CONVERTERS)


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
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(unknown[0], data[unknown[0]], f"unknown key (known: {', '.join(KEYS)})")
    return data


def load_settings(
    path: str | Path | None, environ: Mapping[str, str] | None = None
) -> AgentSettings:
    """Read ``path`` (optional), apply ``PROCFLEET_<KEY>`` overrides from ``environ`` and
    validate everything once. Raises ``ConfigError`` naming the key, the value and the reason."""
    environ = {} if environ is None else environ
    raw: dict[str, Any] = _read_toml(Path(path)) if path else {}
    for key in KEYS:
        env_value = environ.get(ENV_PREFIX + key.upper())
        if env_value is not None:
            raw[key] = env_value
    values = {key: _CONVERTERS[key](key, value) for key, value in raw.items()}
    if values.get("spool_dir") is None:
        values["spool_dir"] = default_spool_dir(environ)
    settings = AgentSettings(**values)
    if settings.splay_s is not None and settings.splay_s > settings.interval_s:
        raise ConfigError("splay_s", settings.splay_s, "must not exceed interval_s")
    return settings
