"""The report contract: pydantic models of what an agent sends to ``POST /v1/reports``.

This module is the single definition of a report. The gateway validates incoming bodies with
it; the agent builds reports with ``agent.rows``, light rows checked by the fields and bounds
of ``agent.contract_spec``, which ``agent.contract_spec_gen`` generates from this module (run it
after any change here; tests/agent/test_rows.py fails until it is current). Field names here
are part of the product (see DESIGN.md, "Contracts").

Rules that hold for every model:
- unknown fields are rejected (``extra="forbid"``), NaN and Infinity are rejected;
- every number has bounds and every string a maximum length;
- CPU is a cumulative counter in seconds, memory is in bytes; rates are computed at query time.

Checks that depend on the clock (a ``collected_at`` far in the future or older than the
retention) belong to the gateway, which knows "now" and the retention.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

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

OsType = Literal["linux", "darwin", "windows", "freebsd", "openbsd", "netbsd", "other"]
# "proc_stat": the processes' CPU time came from /proc/<pid>/stat in clock ticks (Linux), not
# from ps's whole seconds; that snapshot's process_count says for how many processes.
SnapshotSource = Literal["ps", "tasklist", "process_exporter", "proc_stat"]


# Reusable field types: the unit or meaning is in the name of the type. Timestamps use
# pydantic's AwareDatetime (a timezone is required), checked in Rust: ~15 % faster report
# validation than a Python after-validator.
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
]
ShortText = Annotated[str, StringConstraints(max_length=64)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
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
    hostname: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    os_type: OsType
    os_version: Annotated[str, StringConstraints(max_length=128)] = ""
    boot_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    agent_version: Annotated[str, StringConstraints(max_length=32)] = ""


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
    oldest_start_time: AwareDatetime | None = None


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
    command: Annotated[str, StringConstraints(max_length=MAX_COMMAND_CHARS)] = ""
    state: Annotated[str, StringConstraints(max_length=16)] | None = None
    start_time: AwareDatetime | None = None
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
    raw_output: Annotated[str, StringConstraints(max_length=MAX_RAW_OUTPUT_CHARS)] | None = None


class Report(_Strict):
    """Everything one agent collected at one instant. ``report_id`` is the idempotency key:
    the same report retried or replayed from the spool keeps its ``report_id``."""

    report_id: Annotated[
        str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ]
    host: Host
    collected_at: AwareDatetime
    process_groups: Annotated[list[ProcessGroup], Field(max_length=MAX_GROUPS)] = []
    processes: Annotated[list[ProcessSample], Field(max_length=MAX_PROCESSES)] = []
    snapshots: Annotated[list[Snapshot], Field(max_length=MAX_SNAPSHOTS)] = []
