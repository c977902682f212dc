"""The report contract as the agent builds it: light rows checked by the contract's bounds.

``agent.contract`` (pydantic) is the one definition of a report, and the gateway validates
against it. Importing pydantic and building those models costs the agent ~10 MB of its ~43 MB
(docs/BENCHMARKS.md, "Agent footprint"), so the agent builds these rows instead: the same
model names, fields, defaults and bounds, read from ``agent.contract_spec`` (generated from
``agent.contract``; tests/agent/test_rows.py checks the two agree, and that what a row accepts
the contract accepts). They keep the surface the agent uses of a pydantic model:
keyword construction that checks every field (``RowInvalid`` names the field), frozen
attributes, ``==``, ``model_copy(update=...)``, ``model_dump(mode="json")`` and
``model_dump_json()`` (stdlib ``json``; the bytes the gateway's contract reads).

The checks are pydantic's strict mode: no coercion (an ``int`` field refuses ``True`` and
``1.0``; a ``float`` field takes an ``int``), no NaN or infinity, timestamps must carry a time
zone, unknown fields are refused.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from agent.contract_spec import (  # noqa: F401 (re-exported: the bounds the collectors cut to)
    MAX_COMMAND_CHARS,
    MAX_NAME_CHARS,
    MAX_PID,
    MAX_RAW_OUTPUT_CHARS,
    REQUIRED,
    SPEC,
)
from agent.errors import ProcfleetError

Check = Callable[[Any], Any]


NUL_REPLACEMENT = "\ufffd"  # what a decoder writes for bytes it cannot read


def replace_nul(text: str) -> str:
    """``text`` with every NUL replaced by U+FFFD: what the agent does to collected text, so a
    host whose process writes a NUL into its command line is not refused at every report (the
    contract refuses NUL: PostgreSQL's text cannot hold it)."""
    return text.replace("\x00", NUL_REPLACEMENT) if "\x00" in text else text


class RowInvalid(ProcfleetError, ValueError):
    """A value outside the contract: ``field`` (dotted path), the ``value`` and the reason (a
    ``ValueError`` too, as pydantic's own validation errors are)."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}: {reason}")


class _Bad(Exception):
    """Raised by a check: the reason, before the field name is known."""


def _int_check(ge: int | None, le: int | None) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not int:
            raise _Bad("Input should be a valid integer")
        if (ge is not None and value < ge) or (le is not None and value > le):
            raise _Bad(f"Input should be between {ge} and {le}")
        return value
    return check


def _float_check(ge: float | None, le: float | None) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not float:
            if type(value) is not int:
                raise _Bad("Input should be a valid number")
            value = float(value)
        if not math.isfinite(value):
            raise _Bad("Input should be a finite number")
        if (ge is not None and value < ge) or (le is not None and value > le):
            raise _Bad(f"Input should be between {ge} and {le}")
        return value
    return check


def _str_check(min_length: int, max_length: int | None, pattern: str | None,
               nul_free: bool) -> Check:
    # pydantic's regex matches "$" only at the very end; Python's also before a final "\n".
    regex = re.compile(pattern[:-1] + r"\Z" if pattern and pattern.endswith("$") else pattern
                       ) if pattern else None

    def check(value: Any) -> Any:
        if type(value) is not str:
            raise _Bad("Input should be a valid string")
        if len(value) < min_length or (max_length is not None and len(value) > max_length):
            raise _Bad(f"String should have {min_length} to {max_length} characters")
        if regex is not None and regex.search(value) is None:
            raise _Bad(f"String should match pattern '{pattern}'")
        if nul_free and "\x00" in value:
            raise _Bad("Value error, contains a NUL character, which PostgreSQL text cannot hold")
        return value
    return check


def _literal_check(choices: tuple) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not str or value not in choices:
            raise _Bad(f"Input should be one of {', '.join(map(repr, choices))}")
        return value
    return check


def _datetime_check(ge_s: float | None, le_s: float | None) -> Check:
    def check(value: Any) -> Any:
        if not isinstance(value, datetime):
            raise _Bad("Input should be a valid datetime")
        if value.tzinfo is None or value.utcoffset() is None:
            raise _Bad("Input should have timezone info")
        seconds = value.timestamp()  # compared as instants, like the contract
        if (ge_s is not None and seconds < ge_s) or (le_s is not None and seconds > le_s):
            raise _Bad(f"Input should be between {ge_s} and {le_s} epoch seconds")
        return value
    return check


def _optional(inner: Check) -> Check:
    return lambda value: None if value is None else inner(value)


def _list_check(item: Check, max_length: int | None) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not list:
            raise _Bad("Input should be a valid list")
        if max_length is not None and len(value) > max_length:
            raise _Bad(f"List should have at most {max_length} items")
        for i, element in enumerate(value):
            try:
                item(element)
            except _Bad as exc:
                raise _Bad(f"item {i}: {exc}") from None
        return list(value)
    return check


def _model_check(name: str) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not ROWS[name]:
            raise _Bad(f"Input should be a {name}")
        return value
    return check


def _check_of(spec: tuple) -> Check:
    kind, *args = spec
    if kind == "optional":
        return _optional(_check_of(args[0]))
    if kind == "list":
        return _list_check(_check_of(args[0]), args[1])
    if kind == "model":
        return _model_check(args[0])
    if kind == "datetime":
        return _datetime_check(*args)
    makers: dict[str, Callable[..., Check]] = {
        "int": _int_check, "float": _float_check, "str": _str_check, "literal": _literal_check}
    return makers[kind](*args)


def _json_datetime(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()  # pydantic's form: "Z" for UTC
    return text[:-6] + "Z" if value.utcoffset() == _ZERO else text


def _json_of(spec: tuple) -> Callable[[Any], Any] | None:
    """How a field's value becomes JSON: None when it already is (numbers, text, null)."""
    kind = spec[0]
    if kind == "optional":
        return _json_of(spec[1])
    if kind == "datetime":
        return _json_datetime
    if kind == "model":
        return lambda row: None if row is None else row.model_dump(mode="json")
    if kind == "list":
        item = _json_of(spec[1])
        return None if item is None else (lambda items: [item(v) for v in items])
    return None


_ZERO = timedelta(0)


def _python_value(value: Any) -> Any:
    if isinstance(value, Row):
        return value.model_dump()
    if isinstance(value, list):
        return [_python_value(v) for v in value]
    return value


class Row:
    """A frozen record of one contract model (subclasses are built from the spec)."""

    __slots__ = ()
    _fields: tuple[tuple[str, Check, Any], ...] = ()
    _names: frozenset[str] = frozenset()
    _names_in_order: tuple[str, ...] = ()
    _values: Callable[[Any], tuple] = tuple
    _json: tuple[tuple[str, Callable[[Any], Any]], ...] = ()

    def __init__(self, **values: Any) -> None:
        unknown = values.keys() - self._names
        if unknown:
            name = sorted(unknown)[0]
            raise RowInvalid(name, values[name], "Extra inputs are not permitted")
        for name, check, default in self._fields:
            if name in values:
                value = values[name]
                try:
                    value = check(value)
                except _Bad as exc:
                    raise RowInvalid(name, value, str(exc)) from None
            elif default is REQUIRED:
                raise RowInvalid(name, None, "Field required")
            else:
                value = list(default) if type(default) is list else default
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n, _, _ in self._fields)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = ", ".join(f"{n}={getattr(self, n)!r}" for n, _, _ in self._fields)
        return f"{type(self).__name__}({body})"

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Row:
        """A copy with ``update`` applied; only the updated values are checked (the others
        were when this row was built)."""
        update = update or {}
        unknown = update.keys() - self._names
        if unknown:
            name = sorted(unknown)[0]
            raise RowInvalid(name, update[name], "Extra inputs are not permitted")
        copy = object.__new__(type(self))
        for name, check, _default in self._fields:
            value = getattr(self, name)
            if name in update:
                value = update[name]
                try:
                    value = check(value)
                except _Bad as exc:
                    raise RowInvalid(name, value, str(exc)) from None
            object.__setattr__(copy, name, value)
        return copy

    def model_dump(self, *, mode: str = "python", exclude_none: bool = False
                   ) -> dict[str, Any]:
        """The fields as a dict: Python values (``mode="python"``, nested rows as dicts; what
        the contract's pydantic models validate strictly) or JSON values (``"json"``)."""
        if mode not in ("python", "json"):
            raise ValueError(f"mode {mode!r}: expected python or json")
        if mode == "json":
            out = dict(zip(self._names_in_order, self._values(self), strict=True))
            for name, to_json in self._json:  # only the fields that need converting
                out[name] = to_json(out[name])
        else:
            out = {n: _python_value(getattr(self, n)) for n, _, _ in self._fields}
        return {n: v for n, v in out.items() if v is not None} if exclude_none else out

    def model_dump_json(self, *, indent: int | None = None) -> str:
        compact = (",", ":") if indent is None else None
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, allow_nan=False,
                          indent=indent, separators=compact)


ROWS: dict[str, type[Row]] = {}
for _name, _model_fields in SPEC.items():
    _names = tuple(f[0] for f in _model_fields)
    ROWS[_name] = type(_name, (Row,), {
        "__slots__": _names,
        "__module__": __name__,
        "_fields": tuple((n, _check_of(spec), default) for n, spec, default in _model_fields),
        "_names": frozenset(_names),
        "_names_in_order": _names,
        "_values": operator.attrgetter(*_names),
        "_json": tuple((n, to_json) for n, spec, _default in _model_fields
                       if (to_json := _json_of(spec)) is not None),
    })

Host = ROWS["Host"]
ProcessGroup = ROWS["ProcessGroup"]
ProcessSample = ROWS["ProcessSample"]
Snapshot = ROWS["Snapshot"]
Report = ROWS["Report"]
