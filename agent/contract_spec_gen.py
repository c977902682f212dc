"""Write ``agent/contract_spec.py``: the report contract's fields and bounds as plain data.

The pydantic models of ``agent.contract`` are the one definition of a report. The agent itself
does not import pydantic (it costs ~10 MB of its RSS, docs/BENCHMARKS.md "Agent footprint"):
it builds and checks reports with ``agent.rows``, which reads the bounds from the generated
``agent.contract_spec``. Run after any change to the contract (tests/agent/test_rows.py fails
until the generated file matches)::

    python -m agent.contract_spec_gen > agent/contract_spec.py
"""

from __future__ import annotations

import pprint
import types
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo
from pydantic.types import StringConstraints

from agent import contract
from agent.contract import Report

HEADER = '''"""GENERATED from ``agent.contract`` (python -m agent.contract_spec_gen): do not edit.

Per model, in declaration order: ``(field, type, default)``; ``type`` is one of
``("int", ge, le)``, ``("float", ge, le)``,
``("str", min_length, max_length, pattern, nul_free)``, ``("literal", choices)``,
``("datetime", ge_epoch_s, le_epoch_s)``, ``("list", item_type, max_length)``,
``("model", name)`` or ``("optional", type)``; ``default`` is ``REQUIRED`` or the value.
"""

REQUIRED = "<required>"

'''
_BOUNDS = (annotated_types.Ge, annotated_types.Le, annotated_types.MinLen,
           annotated_types.MaxLen)


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            out.update(_constraints(item.metadata))
        elif isinstance(item, StringConstraints):
            out.update({k: getattr(item, k) for k in ("min_length", "max_length", "pattern")
                        if getattr(item, k) is not None})
        elif isinstance(item, _BOUNDS):
            key = type(item).__name__.lower().replace("len", "_length")
            value = getattr(item, key)
            # timestamp bounds as epoch seconds: the generated module stays plain data
            out[key] = value.timestamp() if isinstance(value, datetime) else value
        elif item is contract.NUL_FREE:
            out["nul_free"] = True
        else:
            raise TypeError(f"no light form for constraint {item!r}")
    return out


def _type(tp: Any, metadata: list[Any], str_max: int | None, models: dict) -> tuple:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extra = get_args(tp)
        return _type(base, [*metadata, *extra], str_max, models)
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"no light form for {tp!r}")
        return ("optional", _type(members[0], metadata, str_max, models))
    c = _constraints(metadata)
    if origin is list:
        (item,) = get_args(tp)
        return ("list", _type(item, [], str_max, models), c.get("max_length"))
    if origin is Literal:
        return ("literal", tuple(get_args(tp)))
    if tp is AwareDatetime:
        return ("datetime", c.get("ge"), c.get("le"))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        _model(tp, models)
        return ("model", tp.__name__)
    if tp is str:
        return ("str", c.get("min_length", 0), c.get("max_length", str_max), c.get("pattern"),
                c.get("nul_free", False))
    if tp in (int, float):
        return (tp.__name__, c.get("ge"), c.get("le"))
    raise TypeError(f"no light form for {tp!r}")


def _model(model: type[BaseModel], models: dict) -> None:
    if model.__name__ in models:
        return
    models[model.__name__] = None  # reserve the name: nested models come first in the output
    str_max = model.model_config.get("str_max_length")
    fields = []
    for name, info in model.model_fields.items():
        field_type = _type(info.annotation, list(info.metadata), str_max, models)
        default = "<required>" if info.is_required() else info.get_default(
            call_default_factory=True)
        fields.append((name, field_type, default))
    del models[model.__name__]
    models[model.__name__] = tuple(fields)


def spec() -> dict[str, tuple]:
    """Every model reachable from ``Report``: nested models before the models using them."""
    models: dict[str, Any] = {}
    _model(Report, models)
    return models


def bounds() -> dict[str, int | float]:
    """The contract's ``MAX_*`` constants (the collectors cut values to them)."""
    return {name: value for name, value in vars(contract).items()
            if name.startswith("MAX_") and isinstance(value, int | float)}


def render() -> str:
    constants = "".join(f"{name} = {value!r}\n" for name, value in bounds().items())
    body = pprint.pformat(spec(), width=100, sort_dicts=False)
    return f"{HEADER}{constants}\nSPEC = {body}\n"


if __name__ == "__main__":
    print(render(), end="")
