"""The one settings loader of every procfleet program: the agent, the gateway and the workers.

A program's settings are a frozen dataclass deriving from ``Settings``; each field names its
environment variable and its kind next to its default:

    batch_size: int = setting(5_000, "PROCFLEET_WORKER_BATCH_SIZE", integer(1, 1_000_000))

``Settings.load(environ, file_values=…, **overrides)`` takes, lowest first: the defaults, a
TOML file's values (the agent's; keys are field names), the environment (unset or blank means
"not set"), then ``overrides`` (command-line options; ``None`` means "not given"). Every value is
converted and checked by its kind — numbers finite and within bounds, URLs of the allowed
schemes — and a bad one raises ``ConfigError`` naming where it came from (the variable, the
file's key or the option) and the value as given (a secret's value is never echoed). Built
directly (tests, code), a ``Settings`` is checked the same way in ``__post_init__``, and errors
then name the field's environment variable. ``describe()`` gives the start line's settings with
secrets and URL passwords masked.

This module stays in ``agent`` (the bottom layer) and uses the standard library only, so the
agent loads its settings without pydantic (docs/BENCHMARKS.md, "Agent footprint").
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

from agent.errors import ConfigError

# The servers every program finds on one box when nothing is set (gateway, workers, CLI).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_METADATA_KEY = "procfleet_setting"
_NOT_SET = object()


class Secret:
    """A secret setting (a token): its value never shows in a repr, a log line or an error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def mask_url(url: str) -> str:
    """``redis://:***@host:6379/0``: a URL fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- kinds ------------------------------------------------------------------------------------


def _accept(value: Any) -> None:
    return None


@dataclass(frozen=True)
class Kind:
    """How one setting is read and what it allows. ``parse`` takes the environment's text or a
    TOML value; ``check`` takes the typed value (also on direct construction). Both raise
    ``ValueError`` with the reason. ``shown`` gives the value for the start line."""

    parse: Callable[[Any], Any]
    check: Callable[[Any], None] = _accept
    shown: Callable[[Any], Any] = lambda value: value
    secret: bool = False
    blank_is_none: bool = False  # an empty value turns the setting off instead of "not set"


def _number_text(value: Any, cast: Callable[[Any], Any], what: str) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected {what}")
    if isinstance(value, str):
        value = value.strip().replace("_", "")
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {what}") from None


def integer(low: int, high: int) -> Kind:
    """A whole number in ``[low, high]``."""

    def parse(value: Any) -> int:
        if isinstance(value, float):
            raise ValueError("expected a whole number")
        return _number_text(value, int, "a whole number")

    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected a whole number")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")

    return Kind(parse, check)


def number(low: float, high: float, *, above: bool = False) -> Kind:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``above=True``)."""

    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if not (low < value if above else low <= value) or value > high:
            raise ValueError(f"must be above {low:g} and at most {high:g}" if above else
                             f"must be between {low:g} and {high:g}")

    return Kind(lambda value: _number_text(value, float, "a number"), check)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _check_bool(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")


BOOLEAN = Kind(_parse_bool, _check_bool)


def _parse_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value.strip()


def text(*, choices: tuple[str, ...] = (), pattern: str | None = None, reason: str = "",
         blank_is_none: bool = False) -> Kind:
    """A string: one of ``choices``, or matching ``pattern`` (whole), when given."""
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        if choices and value not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}")
        if compiled is not None and not compiled.fullmatch(value):
            raise ValueError(reason or f"must match {pattern}")

    parse = (lambda value: _parse_text(value) or None) if blank_is_none else _parse_text
    return Kind(parse, check, blank_is_none=blank_is_none)


def url(*schemes: str, strip_slash: bool = False, blank_is_none: bool = False) -> Kind:
    """A URL of one of ``schemes``, with a host unless it is a unix socket; its password is
    masked in the start line."""

    def parse(value: Any) -> str | None:
        found = _parse_text(value)
        if not found:
            return None
        return found.rstrip("/") if strip_slash else found

    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError("expected a URL")
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
        if parts.scheme in ("http", "https") and not parts.hostname:
            raise ValueError("expected a host")

    return Kind(parse, check, shown=mask_url, blank_is_none=blank_is_none)


def _parse_secret(value: Any) -> Secret | None:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    found = value.strip()
    if any(c.isspace() for c in found):
        raise ValueError("must not contain whitespace")
    return Secret(found) if found else None


def _check_secret(value: Any) -> None:
    if not isinstance(value, Secret):
        raise ValueError("expected a secret string")


SECRET = Kind(_parse_secret, _check_secret, shown=lambda value: "***", secret=True)


def _parse_words(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # environment form: comma separated
        items: list[Any] = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise ValueError("expected a list of strings (or a comma-separated string)")
    return tuple(w.strip() for w in items if w.strip())


WORDS = Kind(_parse_words, shown=",".join)


def path(*, must_exist: bool = False) -> Kind:
    """A file system path (``~`` expanded); with ``must_exist``, an existing file."""

    def parse(value: Any) -> Path | None:
        found = _parse_text(value)
        return Path(found).expanduser() if found else None

    def check(value: Any) -> None:
        if must_exist and not Path(value).is_file():
            raise ValueError("file not found")

    return Kind(parse, check, shown=str)


def port() -> Kind:
    """A TCP port; 0 or blank means none."""
    bounds = integer(0, 65_535)

    def parse(value: Any) -> int | None:
        return bounds.parse(value) or None

    return Kind(parse, bounds.check, blank_is_none=True)


# --- fields and loading -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    env: str | None
    kind: Kind


def setting(default: Any = _NOT_SET, env: str | None = None, kind: Kind | None = None, *,
            factory: Callable[[], Any] | None = None) -> Any:
    """A settings field: its default (or ``factory``), its environment variable (None: set by
    code or the command line only) and its kind (None: not read from text)."""
    metadata = {_METADATA_KEY: Setting(env, kind or Kind(_parse_text))}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _settings_of(cls: type) -> dict[str, Setting]:
    return {f.name: f.metadata[_METADATA_KEY] for f in dataclasses.fields(cls)
            if _METADATA_KEY in f.metadata}


class Settings:
    """Base of every program's settings dataclass (``@dataclass(frozen=True)`` subclasses)."""

    # Subclasses may name fields whose None means "off" or "detected" in describe().
    unset_shown: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        for name, spec in _settings_of(type(self)).items():
            value = getattr(self, name)
            if value is None:
                continue
            try:
                spec.kind.check(value)
            except ValueError as exc:
                raise self._error(name, value, str(exc)) from None
        self.check_together()

    def check_together(self) -> None:
        """Rules between fields; raise ``self.invalid(field, reason)``."""

    def invalid(self, name: str, reason: str) -> ConfigError:
        """The error for field ``name`` (named by its variable) with its current value."""
        return self._error(name, getattr(self, name), reason)

    def check_ascending(self, *names: str) -> None:
        """Each of ``names`` at least the one before it (nested retention tiers)."""
        for lower, name in zip(names, names[1:], strict=False):
            if getattr(self, name) < getattr(self, lower):
                raise self.invalid(name, f"must be at least {self.env_name(lower)}="
                                         f"{getattr(self, lower)}")

    @classmethod
    def env_name(cls, name: str) -> str:
        spec = _settings_of(cls).get(name)
        return spec.env if spec is not None and spec.env else name

    def _error(self, name: str, value: Any, reason: str) -> ConfigError:
        spec = _settings_of(type(self)).get(name)
        shown = "***" if spec is not None and spec.kind.secret else (
            spec.kind.shown(value) if spec is not None else value)
        return ConfigError(self.env_name(name), shown, reason)

    @classmethod
    def load(cls, environ: Mapping[str, str], *, file_values: Mapping[str, Any] | None = None,
             **overrides: Any) -> Self:
        """Defaults < ``file_values`` < ``environ`` < ``overrides`` (None = not given)."""
        specs = _settings_of(cls)
        values: dict[str, Any] = {}
        for name, raw in (file_values or {}).items():
            if name not in specs:
                known = ", ".join(n for n, s in specs.items() if s.env)
                raise ConfigError(name, raw, f"unknown key (known: {known})")
            values[name] = _read(specs[name], name, raw)
        for name, spec in specs.items():
            if spec.env is None or spec.env not in environ:
                continue
            raw = environ[spec.env]
            if raw.strip() or spec.kind.blank_is_none:
                values[name] = _read(spec, spec.env, raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        for name, value in values.items():  # name the source, not the field, on a bad value
            spec = specs.get(name)
            if spec is not None and value is not None:
                try:
                    spec.kind.check(value)
                except ValueError as exc:
                    source = _source(spec, name, file_values, environ, overrides)
                    raise ConfigError(source, "***" if spec.kind.secret else _given(
                        source, name, file_values, environ, value), str(exc)) from None
        try:
            return cls(**values)
        except ConfigError as exc:  # a rule between fields: name the field's source
            for name, spec in specs.items():
                if cls.env_name(name) == exc.key and name in values:
                    source = _source(spec, name, file_values, environ, overrides)
                    raise ConfigError(source, exc.value, exc.reason) from None
            raise

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Self:
        """Settings of a program that has no file: the environment, then ``overrides``."""
        return cls.load(environ, **overrides)

    def with_overrides(self, **changes: Any) -> Self:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The effective settings for the start log line: secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            spec = f.metadata.get(_METADATA_KEY)
            if value is None:
                out[f.name] = self.unset_shown.get(f.name, "<unset>")
            elif spec is not None:
                out[f.name] = spec.kind.shown(value)
            else:
                out[f.name] = value
        return out


def _read(spec: Setting, source: str, raw: Any) -> Any:
    try:
        return spec.kind.parse(raw)
    except ValueError as exc:
        raise ConfigError(source, "***" if spec.kind.secret else raw, str(exc)) from None


def _source(spec: Setting, name: str, file_values: Mapping[str, Any] | None,
            environ: Mapping[str, str], overrides: Mapping[str, Any]) -> str:
    if overrides.get(name) is not None:
        return name
    if spec.env and environ.get(spec.env, "").strip():
        return spec.env
    return name if file_values and name in file_values else (spec.env or name)


def _given(source: str, name: str, file_values: Mapping[str, Any] | None,
           environ: Mapping[str, str], value: Any) -> Any:
    """The value as the user wrote it (the variable's text, the file's value)."""
    if source in environ:
        return environ[source]
    if file_values and source == name and name in file_values:
        return file_values[name]
    return value
