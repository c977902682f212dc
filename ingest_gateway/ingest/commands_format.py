"""``POST /v1/commands``: the raw format of teams that collect ``ps`` / ``tasklist`` themselves.

The body carries one command output and the machine it came from; the gateway parses the output
with the agent's parsers and turns it into an ordinary ``Report``, so the rest of the path
(messages, dedupe, enqueue) is the one of ``/v1/reports``. The report_id is derived from
``(machine_id, sha256(output))``: the same output posted twice is the same report and the second
post changes nothing.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic import ValidationError as PydanticValidationError

from agent.contract import (
    MAX_PROCESSES,
    MAX_RAW_OUTPUT_CHARS,
    AwareDatetime,
    Host,
    Identifier,
    OsType,
    Report,
    Snapshot,
)
from agent.errors import ParseError
from agent.parsers import parse_output
from ingest_gateway.errors import Unprocessable

REPORT_ID_PREFIX = "cmd-"
REPORT_ID_HEX_CHARS = 56  # "cmd-" + 56 = 60 characters, within the contract's 64


class CommandsBody(BaseModel):
    """One command output as a team collected it (unknown fields are rejected)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    timestamp: AwareDatetime
    machine_name: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    machine_id: Identifier
    os_type: OsType
    os_version: Annotated[str, StringConstraints(max_length=128)] = ""
    command: Literal["ps", "tasklist"]
    output: Annotated[str, StringConstraints(min_length=1, max_length=MAX_RAW_OUTPUT_CHARS)]


def commands_report_id(machine_id: str, output_sha256: str) -> str:
    """Deterministic report_id of an output: same machine + same bytes = same id."""
    digest = hashlib.sha256(f"{machine_id}\n{output_sha256}".encode()).hexdigest()
    return REPORT_ID_PREFIX + digest[:REPORT_ID_HEX_CHARS]


def to_report(body: CommandsBody) -> tuple[Report, int]:
    """Parse the output into a report; also returns the count of lines that did not parse.

    422 when the output is not a ``ps`` / ``tasklist`` output at all or holds more processes
    than a report may carry."""
    output_sha256 = hashlib.sha256(body.output.encode()).hexdigest()
    try:
        parsed = parse_output(body.output, body.command, now=body.timestamp,
                              tz=body.timestamp.tzinfo)
    except ParseError as exc:
        raise Unprocessable("output", f"cannot parse as {body.command} output: {exc}",
                            kind="parse") from None
    if not parsed.processes:
        reason = f"no process could be read from the {body.command} output"
        if parsed.errors:
            reason += f" ({parsed.errors[0]})"
        raise Unprocessable("output", reason, kind="parse")
    if len(parsed.processes) > MAX_PROCESSES:
        raise Unprocessable("output", f"{len(parsed.processes)} processes, at most "
                            f"{MAX_PROCESSES} per report", kind="schema")
    try:
        report = Report(
            report_id=commands_report_id(body.machine_id, output_sha256),
            host=Host(server_id=body.machine_id, hostname=body.machine_name,
                      os_type=body.os_type, os_version=body.os_version),
            collected_at=body.timestamp,
            processes=parsed.processes,
            snapshots=[Snapshot(source=body.command, sha256=output_sha256,
                                process_count=len(parsed.processes),
                                unparsed_lines=parsed.unparsed_lines, raw_output=body.output)],
        )
    except PydanticValidationError as exc:  # a parser produced something out of bounds
        first = exc.errors(include_url=False)[0]
        raise Unprocessable("output", f"parsed processes break the contract: {first['msg']} "
                            f"at {first['loc']}", kind="parse") from None
    return report, parsed.unparsed_lines
