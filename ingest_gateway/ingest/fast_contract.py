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
"""

from __future__ import annotations

import re
import types
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import msgspec
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo
from pydantic.types import StringConstraints

from agent.contract import Report

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
        return _REPORT_DECODER.decode(body)
    except (msgspec.MsgspecError, ValueError) as exc:  # ValueError: invalid UTF-8
        raise FastPathRefused(f"{type(exc).__name__}: {exc}") from None


def validate_report(body: bytes) -> Any:
    """The report in ``body``: the fast path's Structs, else pydantic's models; raises
    pydantic's ``ValidationError`` (which names the field and the reason) for an invalid one."""
    try:
        return decode_report(body)
    except FastPathRefused:
        return Report.model_validate_json(body)


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    """msgspec ``Meta`` keywords for pydantic's constraint objects; a constraint it cannot
    carry over raises ``TypeError`` (at import: a contract change then fails loudly)."""
    out: dict[str, Any] = {}
    for item in metadata:
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
        for name, info in model.model_fields.items():
            if info.alias not in (None, name):
                raise TypeError(f"{model.__name__}.{name}: aliases are not carried over")
            field_type = self.type_of(info.annotation, list(info.metadata), str_max)
            if info.is_required():
                fields.append((name, field_type))
            else:
                fields.append((name, field_type, info.get_default(call_default_factory=True)))
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
            return _annotated(datetime, {**_constraints(metadata), "tz": True})
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


def _annotated(tp: Any, constraints: dict[str, Any]) -> Any:
    return Annotated[tp, msgspec.Meta(**constraints)] if constraints else tp


_COMPILER = _Compiler()
FastReport = _COMPILER.struct(Report)
# Every model of the contract -> its Struct (ProcessSample -> the Struct of a process, ...).
STRUCT_OF: dict[type[BaseModel], type[msgspec.Struct]] = dict(_COMPILER.structs)
_REPORT_DECODER = msgspec.json.Decoder(FastReport)
