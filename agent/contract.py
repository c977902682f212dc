"""The report contract: pydantic models of what an agent sends to ``POST /v1/reports``.

This module is the single definition of a report. The agent builds reports with it and the
gateway validates incoming bodies with it, so field names here are part of the product
(see DESIGN.md, "Contracts").

Rules that hold for every model:
- unknown fields are rejected (``extra="forbid"``), NaN and Infinity are rejected;
- every number has bounds and every string a maximum length;
- CPU is a cumulative counter in seconds, memory is in bytes; rates are computed at query time.

What PostgreSQL cannot store is refused here, where the agent learns of it (a ``422`` naming
the field), never dead-lettered after a ``2xx``: no string may hold a NUL character
(``\\u0000``; PostgreSQL ``text`` cannot, and JSON parsers already refuse lone surrogates and
invalid UTF-8), and every timestamp lies between ``MIN_TIMESTAMP`` and ``MAX_TIMESTAMP`` (UTC
instants, whatever the offset written: ``9999-12-31T23:59:59-23:59`` is year 10000 in UTC).

Checks that depend on the clock (a ``collected_at`` far in the future or older than the
retention) belong to the gateway, which knows "now" and the retention.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

# Bounds. Generous enough for any real host, tight enough to reject garbage.
MAX_COUNTER_SECONDS = 1e12  # ~31,700 years of CPU time
MAX_BYTES = 2**60  # 1 EiB
MAX_COUNT = 2**31 - 1
MAX_PID = 2**32 - 1
MAX_GROUPS = 5_000
MAX_PROCESSES = 20_000
MAX_SNAPSHOTS = 8
MAX_RAW_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_COMMAND_CHARS = 4096
MAX_NAME_CHARS = 256
# Every timestamp of a report, as a UTC instant: what Python's datetime (year 1..9999 after
# conversion to UTC), PostgreSQL's timestamptz, epoch seconds and the daily partitions all hold
# with room to spare. A process started before 1970 does not exist on a real host.
MIN_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP = datetime(2200, 1, 1, tzinfo=UTC)

OsType = Literal["linux", "darwin", "windows", "freebsd", "openbsd", "netbsd", "other"]
SnapshotSource = Literal["ps", "tasklist", "process_exporter"]


def refuse_nul(text: str) -> str:
    """The text unchanged, or ``ValueError`` when it holds a NUL (PostgreSQL cannot store it)."""
    if "\x00" in text:
        raise ValueError(f"contains a NUL character (\\u0000) at offset {text.index(chr(0))}, "
                         "which PostgreSQL text cannot hold")
    return text


NUL_REPLACEMENT = "\ufffd"  # what a decoder writes for bytes it cannot read


def replace_nul(text: str) -> str:
    """``text`` with every NUL replaced by U+FFFD: what the agent does to collected text, so a
    host whose process writes a NUL into its command line is not refused at every report."""
    return text.replace("\x00", NUL_REPLACEMENT) if "\x00" in text else text


# The marker of every free-text field (ingest_gateway/ingest/fast_contract.py knows it by identity).
NUL_FREE = AfterValidator(refuse_nul)


# Reusable field types: the unit or meaning is in the name of the type. Timestamps use
# pydantic's AwareDatetime (a timezone is required), checked in Rust: ~15 % faster report
# validation than a Python after-validator; its bounds are compared as instants.
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
]
ShortText = Annotated[str, StringConstraints(max_length=64), NUL_FREE]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS), NUL_FREE]
Timestamp = Annotated[AwareDatetime, Field(ge=MIN_TIMESTAMP, le=MAX_TIMESTAMP)]
Seconds = Annotated[float, Field(ge=0, le=MAX_COUNTER_SECONDS)]
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Percent = Annotated[float, Field(ge=0, le=100_000)]  # ps %CPU can exceed 100 per core


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        frozen=True,
        str_max_length=MAX_RAW_OUTPUT_CHARS,
    )


class Host(_Strict):
    """The machine a report comes from. ``server_id`` is the stable identity of the host."""

    server_id: Identifier
    hostname: Annotated[str, StringConstraints(min_length=1, max_length=253), NUL_FREE]
    os_type: OsType
    os_version: Annotated[str, StringConstraints(max_length=128), NUL_FREE] = ""
    boot_id: Annotated[str, StringConstraints(max_length=64), NUL_FREE] | None = None
    agent_version: Annotated[str, StringConstraints(max_length=32), NUL_FREE] = ""


class ProcessGroup(_Strict):
    """One process_exporter group (``namedprocess_namegroup_*``) at one scrape.

    A series is ``(server_id, name)``. Counters are cumulative; an exporter restart shows up
    as a counter that goes down, which the query side treats as a reset.
    """

    name: Name
    num_procs: Count
    cpu_user_seconds_total: Seconds
    cpu_system_seconds_total: Seconds
    memory_resident_bytes: Bytes
    memory_virtual_bytes: Bytes | None = None
    memory_swapped_bytes: Bytes | None = None
    num_threads: Count | None = None
    open_fds: Count | None = None
    read_bytes_total: Bytes | None = None
    write_bytes_total: Bytes | None = None
    major_page_faults_total: Bytes | None = None
    minor_page_faults_total: Bytes | None = None
    context_switches_voluntary_total: Bytes | None = None
    context_switches_nonvoluntary_total: Bytes | None = None
    oldest_start_time: Timestamp | None = None


class ProcessSample(_Strict):
    """One OS process from ps / tasklist at one collection.

    A series is ``(server_id, pid, start_time)`` because pids are reused. ``cpu_percent`` is
    what the tool printed (a lifetime average on Linux) and is kept for display only; rates are
    computed from ``cpu_seconds_total``.
    """

    pid: Annotated[int, Field(ge=0, le=MAX_PID)]
    ppid: Annotated[int, Field(ge=0, le=MAX_PID)] | None = None
    user: ShortText | None = None
    name: Name
    command: Annotated[str, StringConstraints(max_length=MAX_COMMAND_CHARS), NUL_FREE] = ""
    state: Annotated[str, StringConstraints(max_length=16), NUL_FREE] | None = None
    start_time: Timestamp | None = None
    cpu_seconds_total: Seconds | None = None
    cpu_percent: Percent | None = None
    memory_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    rss_bytes: Bytes | None = None
    vsz_bytes: Bytes | None = None
    tty: ShortText | None = None
    session_name: ShortText | None = None
    session_id: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None


class Snapshot(_Strict):
    """Metadata of one raw collector output; ``raw_output`` is optional (kept for reprocessing)."""

    source: SnapshotSource
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    process_count: Count = 0
    unparsed_lines: Count = 0
    raw_output: Annotated[
        str, StringConstraints(max_length=MAX_RAW_OUTPUT_CHARS), NUL_FREE] | None = None


class Report(_Strict):
    """Everything one agent collected at one instant. ``report_id`` is the idempotency key:
    the same report retried or replayed from the spool keeps its ``report_id``."""

    report_id: Annotated[
        str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ]
    host: Host
    collected_at: Timestamp
    process_groups: Annotated[list[ProcessGroup], Field(max_length=MAX_GROUPS)] = []
    processes: Annotated[list[ProcessSample], Field(max_length=MAX_PROCESSES)] = []
    snapshots: Annotated[list[Snapshot], Field(max_length=MAX_SNAPSHOTS)] = []
