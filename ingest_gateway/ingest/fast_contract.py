"""The report contract compiled for speed: msgspec types derived from ``agent.contract``.

Validating a report with pydantic costs ~5 µs of CPU per process on a 2-core box, a third of
the gateway's CPU; msgspec decodes and checks the same report in ~1.5 µs per process
(docs/BENCHMARKS.md, "Ingest validation"). The pydantic models stay the one definition of a
report: this module derives msgspec Structs from them at import (field names, types, bounds,
lengths, patterns, defaults, unknown fields forbidden) and refuses any model feature it does not
know how to carry over. The gateway uses them as a fast path only:

- a body ``decode_report`` accepts is a valid report by the contract, with the values pydantic
  would give (tests/gateway/test_fast_contract.py pins both, on generated bodies too);
- a body it refuses (``FastPathRefused``) is validated again by pydantic, which names the field
  and the reason for the 422, or accepts a form msgspec does not read (e.g. ``2026-01-01T00:00Z``).

Where the two libraries differ, this module sides with pydantic:

- patterns: pydantic's regex engine matches ``$`` only at the very end, Python's ``re`` also
  before a final newline, so a closing ``$`` becomes ``\\Z``;
- datetimes with more than six fractional digits: msgspec rounds to the microsecond where
  pydantic truncates (a start time is part of a row's key), so such bodies take pydantic's path.

Two contract rules have no msgspec constraint and are carried another way:

- no NUL in a string (``agent.contract.NUL_FREE``): JSON can carry a NUL only as an escape
  (``\\u0000``; a raw control character is malformed JSON for both libraries), and every body
  with an escaped ASCII character already takes pydantic's path (see ``_ESCAPED_ASCII``);
- timestamp bounds (``ge``/``le`` on a datetime): checked after decoding (``_DatetimeBounds``),
  comparing instants as pydantic does; a value out of bounds refuses the body so that pydantic
  names the field. (A Struct ``__post_init__`` did the same for 16 % more CPU per process.)
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import msgspec
from pydantic import AwareDatetime, BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic.types import StringConstraints

from agent.contract import NUL_FREE, Report

# A fraction of a second longer than microseconds, inside a JSON string (a float's digits are
# followed by , ] } or e, never by one of these). An escaped ASCII character (\u0000-\u007f)
# could spell the digits, the dot or the Z out of this pattern's sight (msgspec decodes escapes
# before it parses a datetime), so a body with one takes pydantic's path too: JSON writers such
# as the agent's orjson escape only control characters that way.
_LONG_FRACTION = re.compile(rb'\.\d{7,}[Zz+"-]')
_ESCAPED_ASCII = re.compile(rb"\\u00[0-7]")


class FastPathRefused(ValueError):
    """msgspec did not accept the body; pydantic decides (and names the field if it refuses)."""


def decode_report(body: bytes) -> Any:
    """The report in ``body`` as msgspec Structs shaped like ``agent.contract.Report``, or
    ``FastPathRefused``."""
    if (b"\\u00" in body and _ESCAPED_ASCII.search(body)) or _LONG_FRACTION.search(body):
        raise FastPathRefused("a timestamp with more than 6 fractional digits, or an escape")
    try:
        report = _REPORT_DECODER.decode(body)
    except (msgspec.MsgspecError, ValueError) as exc:  # ValueError: invalid UTF-8
        raise FastPathRefused(f"{type(exc).__name__}: {exc}") from None
    if not _REPORT_BOUNDS.holds(report):
        raise FastPathRefused("a timestamp out of bounds")
    return report


def validate_report(body: bytes,
                    on_fallback: Callable[[str], None] | None = None) -> Any:
    """The report in ``body`` as the fast path's Structs, whichever library decided; raises
    pydantic's ``ValidationError`` (which names the field and the reason) for an invalid one.

    ``on_fallback("accepted" | "refused")`` is told each time msgspec refused and pydantic
    decided: "refused" is an ordinary bad body, "accepted" a form only pydantic reads — if
    that becomes common, a contract change has left the fast path behind and every report pays
    pydantic's price (the gateway counts both in ``/metrics``)."""
    try:
        return decode_report(body)
    except FastPathRefused:
        try:
            report = Report.model_validate_json(body)
        except ValidationError:
            if on_fallback is not None:
                on_fallback("refused")
            raise
        if on_fallback is not None:
            on_fallback("accepted")
        return as_struct(report)


def as_struct(report: Report) -> Any:
    """A validated pydantic report as the fast path's Structs, so everything downstream reads
    one type. Rare (a body only pydantic reads, or ``/v1/commands``), so it goes through
    pydantic's canonical JSON; no guard is needed on text pydantic wrote itself."""
    return _REPORT_DECODER.decode(report.model_dump_json())


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    """msgspec ``Meta`` keywords for pydantic's constraint objects; a constraint it cannot
    carry over raises ``TypeError`` (at import: a contract change then fails loudly)."""
    out: dict[str, Any] = {}
    for item in metadata:
        if item is NUL_FREE:
            continue  # no escaped control character reaches msgspec (module docstring)
        if isinstance(item, FieldInfo):
            out.update(_constraints(item.metadata))
        elif isinstance(item, StringConstraints):
            unsupported = {k for k in ("strip_whitespace", "to_upper", "to_lower", "strict",
                                       "ascii_only") if getattr(item, k) is not None}
            if unsupported:
                raise TypeError(f"no msgspec form for StringConstraints {sorted(unsupported)}")
            for key in ("min_length", "max_length", "pattern"):
                if getattr(item, key) is not None:
                    out[key] = getattr(item, key)
        elif isinstance(item, annotated_types.Ge | annotated_types.Le | annotated_types.Gt
                        | annotated_types.Lt | annotated_types.MinLen | annotated_types.MaxLen):
            key = type(item).__name__.lower().replace("len", "_length")
            out[key] = getattr(item, key)
        else:
            raise TypeError(f"no msgspec form for constraint {item!r}")
    if "pattern" in out and out["pattern"].endswith("$") and not out["pattern"].endswith("\\$"):
        out["pattern"] = out["pattern"][:-1] + r"\Z"
    return out


class _Compiler:
    """Turns pydantic field types into msgspec types, one Struct per model."""

    def __init__(self) -> None:
        self.structs: dict[type[BaseModel], type[msgspec.Struct]] = {}
        # Per model: its datetime fields' (name, ge, le), and its fields holding models
        # (name, model, is a list).
        self.bounds: dict[type[BaseModel], list[tuple[str, Any, Any]]] = {}
        self.children: dict[type[BaseModel], list[tuple[str, type[BaseModel], bool]]] = {}
        # (ge, le) of the datetime field being compiled (a nested model's are taken by then)
        self._datetime_bounds: list[tuple[Any, Any]] = []

    def struct(self, model: type[BaseModel]) -> type[msgspec.Struct]:
        if model in self.structs:
            return self.structs[model]
        config = model.model_config
        if (config.get("extra") != "forbid" or not config.get("strict")
                or config.get("allow_inf_nan", True)):
            raise TypeError(f"{model.__name__}: the fast path assumes extra='forbid', "
                            f"strict=True, allow_inf_nan=False")
        str_max = config.get("str_max_length")
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        bounds: list[tuple[str, Any, Any]] = []
        for name, info in model.model_fields.items():
            if info.alias not in (None, name):
                raise TypeError(f"{model.__name__}.{name}: aliases are not carried over")
            field_type = self.type_of(info.annotation, list(info.metadata), str_max)
            if info.is_required():
                fields.append((name, field_type))
            else:
                fields.append((name, field_type, info.get_default(call_default_factory=True)))
            bounds += [(name, low, high) for low, high in self._datetime_bounds]
            self._datetime_bounds.clear()
            child = _model_in(info.annotation)
            if child is not None:
                self.children.setdefault(model, []).append((name, *child))
        self.bounds[model] = bounds
        self.structs[model] = msgspec.defstruct(
            model.__name__, fields, kw_only=True, forbid_unknown_fields=True)
        return self.structs[model]

    def type_of(self, tp: Any, metadata: list[Any], str_max: int | None) -> Any:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *extra = get_args(tp)
            return self.type_of(base, [*metadata, *extra], str_max)
        if origin in (Union, types.UnionType):
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) != 1 or len(get_args(tp)) != 2:
                raise TypeError(f"no msgspec form for {tp!r}")
            return self.type_of(members[0], metadata, str_max) | None
        if origin is list:
            (item,) = get_args(tp)
            return _annotated(list[self.type_of(item, [], str_max)], _constraints(metadata))
        if origin is Literal:
            return tp
        if tp is AwareDatetime:
            constraints = _constraints(metadata)
            low, high = constraints.pop("ge", None), constraints.pop("le", None)
            if {"gt", "lt"} & set(constraints) or (low is None) != (high is None):
                raise TypeError("a datetime needs both ge and le, or neither")
            if low is not None:
                self._datetime_bounds.append((low, high))
            return _annotated(datetime, {**constraints, "tz": True})
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return self.struct(tp)
        constraints = _constraints(metadata)
        if tp is str:
            if str_max is not None:  # the model's str_max_length, unless the field has one
                constraints.setdefault("max_length", str_max)
            return _annotated(str, constraints)
        if tp is float and not {"le", "lt"} & set(constraints):
            # JSON's 1e999 decodes to inf; only an upper bound refuses it as pydantic does.
            raise TypeError("an unbounded float would let inf through the fast path")
        if tp in (int, float):
            return _annotated(tp, constraints)
        raise TypeError(f"no msgspec form for {tp!r}")


def _model_in(tp: Any) -> tuple[type[BaseModel], bool] | None:
    """The model a field type holds (``Model``, ``list[Model]``, optionally ``| None``) and
    whether it is a list; None for other types."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _model_in(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        found = [m for m in map(_model_in, get_args(tp)) if m is not None]
        return found[0] if found else None
    if origin is list:
        inner = _model_in(get_args(tp)[0])
        return None if inner is None else (inner[0], True)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp, False
    return None


class _DatetimeBounds:
    """Checks the datetime bounds of a decoded report: its own fields and those of the models
    it holds, one level down (the contract's shape; a deeper one fails at import)."""

    def __init__(self, compiler: _Compiler, model: type[BaseModel]) -> None:
        self.own = compiler.bounds[model]
        self.nested: list[tuple[str, bool, list[tuple[str, Any, Any]]]] = []
        for name, child, is_list in compiler.children.get(model, []):
            if compiler.children.get(child) and any(
                    compiler.bounds.get(m) for m, _ in _descendants(compiler, child)):
                raise TypeError(f"{child.__name__}: datetime bounds two levels down")
            if compiler.bounds[child]:
                self.nested.append((name, is_list, compiler.bounds[child]))

    def holds(self, report: Any) -> bool:
        if not _within(report, self.own):
            return False
        for name, is_list, bounds in self.nested:
            value = getattr(report, name)
            items = value if is_list else ([] if value is None else [value])
            for field_name, low, high in bounds:
                # Most values are years well inside the bounds: a cheap test first (an offset
                # moves the instant by less than a day, so a year a whole year away from both
                # bounds' years is inside).
                low_year, high_year = low.year + 1, high.year - 1
                for item in items:
                    moment = getattr(item, field_name)
                    if moment is not None and not low_year < moment.year < high_year and (
                            not low <= moment <= high):
                        return False
        return True


def _within(value: Any, bounds: list[tuple[str, Any, Any]]) -> bool:
    for name, low, high in bounds:
        moment = getattr(value, name)
        if moment is not None and not low <= moment <= high:
            return False
    return True


def _descendants(compiler: _Compiler, model: type[BaseModel]) -> list[tuple[Any, bool]]:
    out = []
    for _, child, is_list in compiler.children.get(model, []):
        out += [(child, is_list), *_descendants(compiler, child)]
    return out


def _annotated(tp: Any, constraints: dict[str, Any]) -> Any:
    return Annotated[tp, msgspec.Meta(**constraints)] if constraints else tp


_COMPILER = _Compiler()
FastReport = _COMPILER.struct(Report)
_REPORT_BOUNDS = _DatetimeBounds(_COMPILER, Report)
# Every model of the contract -> its Struct (ProcessSample -> the Struct of a process, ...).
STRUCT_OF: dict[type[BaseModel], type[msgspec.Struct]] = dict(_COMPILER.structs)
_REPORT_DECODER = msgspec.json.Decoder(FastReport)
