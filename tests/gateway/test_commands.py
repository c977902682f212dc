"""POST /v1/commands: raw ps / tasklist outputs parsed by the agent's parsers and enqueued."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.parsers import parse_output
from ingest_gateway import stream
from ingest_gateway.ingest.commands_format import commands_report_id
from tests.support.reports import iso, stream_entries, total_messages

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PS_AUX = (FIXTURES / "ps" / "procps_aux.txt").read_text()
TASKLIST_CSV = (FIXTURES / "tasklist" / "en_csv_v.txt").read_text()


def commands_doc(output: str, command: str = "ps", **overrides) -> dict:
    doc = {
        "timestamp": iso(datetime.now(UTC) - timedelta(minutes=1)),
        "machine_name": "legacy-01.example",
        "machine_id": "legacy-01",
        "os_type": "linux" if command == "ps" else "windows",
        "os_version": "Ubuntu 22.04",
        "command": command,
        "output": output,
    }
    return {**doc, **overrides}


async def test_ps_output_is_parsed_and_enqueued_like_a_report(gateway, redis):
    doc = commands_doc(PS_AUX)
    expected = parse_output(PS_AUX, "ps")

    response = await gateway.post("/v1/commands", doc)

    assert response.status == 202
    body = await response.json()
    sha = hashlib.sha256(PS_AUX.encode()).hexdigest()
    assert body == {"report_id": commands_report_id("legacy-01", sha),
                    "accepted": {"processes": len(expected.processes), "groups": 0},
                    "unparsed_lines": expected.unparsed_lines}
    (messages,) = (await stream_entries(redis, 4)).values()
    kinds = [kind for kind, _ in messages]
    assert kinds == ["h", "s"] + ["p"] * len(expected.processes)
    snapshot = dict(zip(stream.COLUMNS["s"], messages[1][1], strict=True))
    assert snapshot["source"] == "ps" and snapshot["sha256"] == sha
    assert snapshot["raw_output"] == PS_AUX  # kept for reprocessing
    pids = [dict(zip(stream.COLUMNS["p"], row, strict=True))["pid"] for _, row in messages[2:]]
    assert pids == [p.pid for p in expected.processes]


async def test_tasklist_output_is_accepted(gateway, redis):
    response = await gateway.post("/v1/commands", commands_doc(TASKLIST_CSV, "tasklist"))

    assert response.status == 202
    assert (await response.json())["accepted"]["processes"] > 0


async def test_same_output_posted_twice_changes_nothing(gateway, redis):
    first = await gateway.post("/v1/commands", commands_doc(PS_AUX))
    count = await total_messages(redis, 4)
    # A later timestamp does not make it another snapshot: the output is the identity.
    second = await gateway.post("/v1/commands", commands_doc(
        PS_AUX, timestamp=iso(datetime.now(UTC))))

    assert first.status == 202
    assert second.status == 200
    assert (await second.json())["duplicate"] is True
    assert await total_messages(redis, 4) == count


async def test_raw_output_is_capped_in_the_snapshot_message(make_gateway, redis):
    gateway = await make_gateway(max_raw_output_bytes=100)
    assert (await gateway.post("/v1/commands", commands_doc(PS_AUX))).status == 202

    (messages,) = (await stream_entries(redis, 4)).values()
    snapshot = dict(zip(stream.COLUMNS["s"], messages[1][1], strict=True))
    assert snapshot["raw_output"] == PS_AUX.encode()[:100].decode()
    assert snapshot["sha256"] == hashlib.sha256(PS_AUX.encode()).hexdigest()


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"command": "top"}, "command", "'ps' or 'tasklist'"),
    ({"output": ""}, "output", "at least 1"),
    ({"output": "this is not a process table\nat all\n"}, "output",
     "no process could be read"),
    ({"machine_id": "bad id with spaces"}, "machine_id", "pattern"),
    ({"extra": 1}, "extra", "Extra inputs"),
    ({"timestamp": iso(datetime.now(UTC) + timedelta(days=1))}, "timestamp", "future"),
    ({"timestamp": iso(datetime.now(UTC) - timedelta(days=400))}, "timestamp", "retention"),
])
async def test_bad_commands_body_is_refused_and_enqueues_nothing(
    gateway, redis, change, field, reason
):
    response = await gateway.post("/v1/commands", {**commands_doc(PS_AUX), **change})

    assert response.status == 422
    error = (await response.json())["error"]
    assert error["field"] == field
    assert reason.lower() in error["reason"].lower()
    assert await total_messages(redis, 4) == 0


async def test_commands_need_an_ingest_token(gateway, redis):
    response = await gateway.post("/v1/commands", commands_doc(PS_AUX),
                                  headers=gateway.headers(gateway.read_token))
    assert response.status == 403
    assert await total_messages(redis, 4) == 0


async def test_large_output_parsed_in_a_thread_gives_the_same_result(gateway, redis):
    header, *rows = PS_AUX.splitlines()
    big = "\n".join([header] + [rows[i % len(rows)] for i in range(6_000)]) + "\n"
    assert len(big) > 256 * 1024

    response = await gateway.post("/v1/commands", commands_doc(big))

    assert response.status == 202
    assert (await response.json())["accepted"]["processes"] == len(parse_output(big, "ps")
                                                                    .processes)
