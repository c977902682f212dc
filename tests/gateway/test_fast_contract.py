"""The gateway's fast path (msgspec) accepts only what the contract (pydantic) accepts, with the
same values; what it refuses, pydantic decides."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from agent.contract import Host, ProcessGroup, ProcessSample, Report, Snapshot
from ingest_gateway import stream
from ingest_gateway.ingest.fast_contract import STRUCT_OF, FastPathRefused, decode_report
from ingest_gateway.ingest.messages import report_messages
from tests.support.reports import report_doc, stream_entries


def plain(value: Any) -> Any:
    """Models and Structs as dicts, recursively (aware datetimes compare by instant)."""
    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, msgspec.Struct):
        return {name: plain(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def full_doc() -> dict[str, Any]:
    doc = report_doc(processes=2, groups=2, snapshots=[
        {"source": "ps", "sha256": "a" * 64, "process_count": 2, "raw_output": "PID CMD\n"}])
    doc["host"]["boot_id"] = "b-1"
    doc["processes"][0].update(tty="pts/0", session_name="Console", session_id=1)
    doc["process_groups"][0].update(
        memory_virtual_bytes=5, memory_swapped_bytes=0, num_threads=4, open_fds=9,
        read_bytes_total=1, write_bytes_total=2, major_page_faults_total=3,
        minor_page_faults_total=4, context_switches_voluntary_total=5,
        context_switches_nonvoluntary_total=6)
    return doc


def test_every_model_has_a_struct_with_its_fields():
    for model in (Host, ProcessGroup, ProcessSample, Snapshot, Report):
        assert set(STRUCT_OF[model].__struct_fields__) == set(model.model_fields), model


def test_constraints_carry_over():
    fields = {f.name: f for f in msgspec.inspect.type_info(STRUCT_OF[Host]).fields}
    assert fields["server_id"].type.pattern == r"^[A-Za-z0-9._:@-]+\Z"  # never before a \n
    assert (fields["server_id"].type.min_length, fields["server_id"].type.max_length) == (1, 128)
    process = {f.name: f for f in msgspec.inspect.type_info(STRUCT_OF[ProcessSample]).fields}
    assert (process["pid"].type.ge, process["pid"].type.le) == (0, 2**32 - 1)
    assert process["command"].type.max_length == 4096 and process["command"].default == ""


def test_a_report_decodes_to_the_values_pydantic_gives():
    body = body_of(full_doc())
    assert plain(decode_report(body)) == plain(Report.model_validate_json(body))


def test_both_paths_give_the_same_stream_messages():
    body = body_of(full_doc())
    fast = report_messages(decode_report(body), shards=4, max_raw_output_bytes=100)
    slow = report_messages(Report.model_validate_json(body), shards=4, max_raw_output_bytes=100)
    assert fast.payloads == slow.payloads and fast.shard == slow.shard


def mutated(path: tuple, value: Any) -> dict[str, Any]:
    doc = full_doc()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


REFUSED_BY_BOTH = [
    (("host", "server_id"), "web-01\n"),  # Python's re matches $ before a final newline
    (("host", "server_id"), ""),
    (("host", "os_type"), "plan9"),
    (("host", "hostname"), "h" * 254),
    (("processes", 0, "pid"), -1),
    (("processes", 0, "pid"), 2**32),
    (("processes", 0, "pid"), 2**70),
    (("processes", 0, "pid"), 1.0),
    (("processes", 0, "pid"), True),
    (("processes", 0, "pid"), "1"),
    (("processes", 0, "name"), None),
    (("processes", 0, "command"), "x" * 4097),
    (("processes", 0, "memory_percent"), 100.5),
    (("processes", 0, "cpu_seconds_total"), 1e300),
    (("processes", 0, "start_time"), "2026-01-01T00:00:00"),  # no offset
    (("processes", 0, "start_time"), "2026-02-30T00:00:00Z"),
    (("processes", 0, "start_time"), 1_790_000_000),
    (("processes", 0, "unknown"), 1),
    (("process_groups", 0, "num_procs"), 2**31),
    (("snapshots", 0, "sha256"), "A" * 64),
    (("snapshots", 0, "source"), "top"),
    (("report_id",), "short"),
    (("collected_at",), None),
]


@pytest.mark.parametrize(("path", "value"), REFUSED_BY_BOTH)
def test_what_the_contract_refuses_the_fast_path_refuses(path, value):
    body = body_of(mutated(path, value))
    with pytest.raises(ValidationError):
        Report.model_validate_json(body)
    with pytest.raises(FastPathRefused):
        decode_report(body)


@pytest.mark.parametrize("body", [
    b'{"report_id": "r-00000001", "host": 1}',
    b"[]",
    b"{" + b'"a":' * 5 + b"1",
    body_of(full_doc()) + b" x",
    body_of(full_doc()).replace(b'"web-01"', b'"\\ud800"', 1),  # a lone surrogate
    body_of(full_doc()).replace(b"1.5", b"1e999", 1),  # inf
    body_of(full_doc()).replace(b"web-01", b"web-\xff1", 1),  # not UTF-8
])
def test_malformed_bodies_are_refused_by_both(body):
    with pytest.raises(ValidationError):
        Report.model_validate_json(body)
    with pytest.raises(FastPathRefused):
        decode_report(body)


@pytest.mark.parametrize("body", [
    body_of(mutated(("processes", 0, "start_time"), "2026-01-01T05:30:00.123+05:30")),
    body_of(mutated(("processes", 0, "start_time"), "2026-01-01 00:00:00.5z")),
    body_of(mutated(("processes", 0, "cpu_seconds_total"), 3)),  # an int for a float
    body_of(mutated(("processes", 0, "cpu_percent"), -0.0)),
    body_of(mutated(("processes", 0, "command"), "naïve \"quoted\" 日本 \u2028")),
    body_of(mutated(("host", "boot_id"), None)),
    body_of(report_doc(processes=1)).replace(b'"pid": 100', b'"pid": 100, "pid": 7'),
])
def test_what_both_accept_has_the_same_values(body):
    assert plain(decode_report(body)) == plain(Report.model_validate_json(body))


def test_fractions_beyond_microseconds_go_to_pydantic_which_truncates():
    # msgspec would round .1234567 up to .123457; pydantic truncates: a start time is a key.
    body = body_of(mutated(("processes", 0, "start_time"), "2026-01-01T00:00:00.1234567Z"))
    with pytest.raises(FastPathRefused, match="fractional digits"):
        decode_report(body)
    assert Report.model_validate_json(body).processes[0].start_time == datetime(
        2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("escaped", [
    '"2026-01-01T00:00:00.123456\\u0037Z"',  # the 7th digit escaped
    '"2026-01-01T00:00:00.1234567\\u005a"',  # the Z escaped
    '"2026-01-01T00:00:00\\u002e1234567Z"',  # the dot escaped
])
def test_escapes_cannot_hide_a_long_fraction_from_the_fast_path(escaped):
    body = body_of(mutated(("processes", 0, "start_time"), "PLACEHOLDER")).replace(
        b'"PLACEHOLDER"', escaped.encode())
    with pytest.raises(FastPathRefused):
        decode_report(body)
    assert Report.model_validate_json(body).processes[0].start_time == datetime(
        2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


def test_forms_only_pydantic_reads_are_left_to_it():
    body = body_of(mutated(("processes", 0, "start_time"), "2026-01-01T00:00Z"))
    with pytest.raises(FastPathRefused):
        decode_report(body)
    assert Report.model_validate_json(body).processes[0].start_time == datetime(
        2026, 1, 1, tzinfo=UTC)


# -- generated bodies: whatever the fast path accepts, pydantic accepts with the same values --

_LEAVES = [
    ("report_id",), ("collected_at",), ("host", "server_id"), ("host", "hostname"),
    ("host", "os_type"), ("host", "boot_id"), ("processes", 0, "pid"),
    ("processes", 0, "ppid"), ("processes", 0, "user"), ("processes", 0, "name"),
    ("processes", 0, "start_time"), ("processes", 0, "cpu_seconds_total"),
    ("processes", 0, "cpu_percent"), ("processes", 0, "memory_percent"),
    ("processes", 0, "rss_bytes"), ("processes", 0, "session_id"),
    ("process_groups", 0, "cpu_user_seconds_total"), ("process_groups", 0, "num_threads"),
    ("process_groups", 0, "oldest_start_time"), ("snapshots", 0, "sha256"),
    ("snapshots", 0, "raw_output"), ("snapshots", 0, "process_count"),
]
_DATETIMES = st.builds(
    lambda d, sep, frac, tz: d.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + tz,
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["", ".1", ".123", ".123456", ".1234567", ",5", "."]),
    st.sampled_from(["Z", "z", "+00:00", "-05:30", "+0000", "+23:59", "+24:00", "", "+01"]))
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 100, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**60, 2**60 + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 100.0, 100.0001, 1e12, 1e12 + 1, 100_000.0]),
    st.text(max_size=12),
    st.sampled_from(["web-01\n", "a" * 64, "A" * 64, "r" * 65, "ps", "linux", " ", "\u0000"]),
    _DATETIMES,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_LEAVES), _VALUES), min_size=1, max_size=3),
       st.booleans())
def test_the_fast_path_never_accepts_more_than_the_contract(changes, drop_one):
    doc = copy.deepcopy(full_doc())
    for path, value in changes:
        target = doc
        for key in path[:-1]:
            target = target[key]
        if drop_one and path == changes[0][0]:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    body = body_of(doc)
    try:
        fast = decode_report(body)
    except FastPathRefused:
        return  # pydantic decides; nothing to compare
    assert plain(fast) == plain(Report.model_validate_json(body))


@pytest.mark.integration
async def test_the_gateway_takes_a_form_only_pydantic_reads_and_refuses_with_its_reason(
        gateway, redis):
    recent = datetime.now(UTC).replace(second=0, microsecond=0)
    doc = report_doc(server_id="only-pydantic", processes=1, groups=0, collected_at=recent)
    doc["processes"][0]["start_time"] = recent.strftime("%Y-%m-%dT%H:%MZ")  # no seconds
    assert (await gateway.post_report(doc)).status == 202
    (messages,) = (await stream_entries(redis, 4)).values()
    (row,) = [row for kind, row in messages if kind == "p"]
    assert datetime.fromisoformat(row[stream.COLUMNS["p"].index("start_time")]) == recent

    doc["processes"][0]["pid"] = -1
    response = await gateway.post_report(doc)
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["field"] == "processes[0].pid" and "greater than or equal to 0" in error["reason"]
