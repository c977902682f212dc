"""The agent's light rows (agent.rows) agree with the report contract (agent.contract): the
generated spec is current, and for every field the two accept and refuse the same values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydantic
import pytest

from agent import contract, rows
from agent.contract_spec_gen import render

VALID = {  # a value every field of that kind accepts, to fill the other fields
    "Host": {"server_id": "h-1", "hostname": "h", "os_type": "linux"},
    "ProcessGroup": {"name": "g", "num_procs": 1, "cpu_user_seconds_total": 1.0,
                     "cpu_system_seconds_total": 1.0, "memory_resident_bytes": 1},
    "ProcessSample": {"pid": 1, "name": "p"},
    "Snapshot": {"source": "ps", "sha256": "a" * 64},
}
NAIVE = datetime(2026, 1, 1, 10, 0)


def candidates(spec: tuple) -> list:
    """Values at and around the bounds of a field type, plus wrong types."""
    kind, *args = spec
    if kind == "optional":
        return [None, *candidates(args[0])]
    if kind == "int":
        ge, le = args
        return [ge, ge - 1, le, le + 1, 7, True, 7.0, "7", None]
    if kind == "float":
        ge, le = args
        return [ge, ge - 1, le, le * 1.5, 7, 7.5, float("nan"), float("inf"), True, "7", None]
    if kind == "str":
        low, high, _pattern, _nul_free = args
        values = ["", "a", "a" * max(low - 1, 0), "a" * low, "a" * high, "a" * (high + 1),
                  "a\n", 7, None, "f" * 64, "f" * 64 + "\n", "ab cd", "x_y-z", "a\x00b"]
        return values
    if kind == "literal":
        return [*args[0], "nope", None, 1]
    if kind == "datetime":
        return [datetime(2026, 1, 1, tzinfo=UTC), NAIVE,
                datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))), "2026-01-01", None,
                # the bounds, compared as instants
                datetime(1970, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, tzinfo=UTC),
                datetime(2200, 1, 1, tzinfo=UTC),
                datetime(2199, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2))),
                datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=23,
                                                                            minutes=59)))]
    raise AssertionError(kind)


def accepts(model, values: dict) -> bool:
    try:
        model(**values)
    except (pydantic.ValidationError, rows.RowInvalid):
        return False
    return True


CASES = [(name, field, spec, value)
         for name, fields in rows.SPEC.items() if name in VALID
         for field, spec, _default in fields
         for value in candidates(spec)]


def test_the_generated_spec_matches_the_contract():
    spec_file = Path(rows.__file__).with_name("contract_spec.py")
    assert spec_file.read_text() == render(), (
        "agent/contract_spec.py is stale: python -m agent.contract_spec_gen "
        "> agent/contract_spec.py")


def test_every_model_and_field_of_the_contract_has_a_row():
    for name in rows.SPEC:
        model = getattr(contract, name)
        assert [f for f, _, _ in rows.SPEC[name]] == list(model.model_fields), name


@pytest.mark.parametrize(("model", "field", "spec", "value"), CASES,
                         ids=[f"{c[0]}.{c[1]}={c[3]!r:.20}" for c in CASES])
def test_rows_and_the_contract_accept_the_same_values(model, field, spec, value):
    values = {**VALID[model], field: value}
    light, strict = getattr(rows, model), getattr(contract, model)
    assert accepts(light, values) == accepts(strict, values), (model, field, value)
    if accepts(light, values):
        assert (light(**values).model_dump_json() ==
                strict(**values).model_dump_json()), "the same JSON for the same values"


def test_a_report_of_rows_serializes_as_the_contract_would():
    at = datetime(2026, 3, 12, 19, 30, 0, 123456, tzinfo=UTC)
    kwargs = dict(report_id="r" * 16, collected_at=at, process_groups=[], snapshots=[])
    light = rows.Report(host=rows.Host(**VALID["Host"]),
                        processes=[rows.ProcessSample(pid=1, name="ünïcode", start_time=at,
                                                      cpu_seconds_total=1.25)], **kwargs)
    strict = contract.Report(host=contract.Host(**VALID["Host"]),
                             processes=[contract.ProcessSample(pid=1, name="ünïcode",
                                                               start_time=at,
                                                               cpu_seconds_total=1.25)],
                             **kwargs)
    assert light.model_dump_json() == strict.model_dump_json()
    assert rows.Report(**{**kwargs, "host": light.host, "processes": []}) != light


def test_rows_are_frozen_and_name_the_bad_field():
    sample = rows.ProcessSample(pid=1, name="p")
    with pytest.raises(AttributeError):
        sample.pid = 2
    with pytest.raises(rows.RowInvalid) as info:
        sample.model_copy(update={"rss_bytes": -1})
    assert (info.value.field, info.value.value) == ("rss_bytes", -1)
    with pytest.raises(rows.RowInvalid, match="Extra inputs"):
        rows.ProcessSample(pid=1, name="p", colour="red")
    with pytest.raises(rows.RowInvalid) as info:
        rows.Report(report_id="r" * 16, collected_at=datetime.now(UTC),
                    host=contract.Host(**VALID["Host"]))  # a pydantic Host is not a row
    assert info.value.field == "host"
