"""The agent's own process table: runs ``ps`` (or ``tasklist``) with a format of exact fields.

Unlike the saved outputs :mod:`agent.parsers.ps` reads, here the agent picks the columns:

- Linux procps: ``comm:64`` first (a fixed width, so a name with spaces is cut exactly), pid,
  ppid, ``user:64`` (not cut to ``systemd+``), ``lstart`` (the start to the second and stable
  across calls, unlike one derived from ``etimes``, which jitters by a second and would split
  a process's series), cumulative ``time``, rss, vsz, stat, tty, %cpu, %mem, and ``args``
  last and unabridged (``-ww``).
- macOS / BSD: ``ps -axww -o`` with the same fields except ``comm`` (a full path there, of
  any length, so it has no fixed width); the name comes from the command line.
- BusyBox (when procps' options are refused): ``comm`` first (16 wide), pid, ppid, user,
  vsz, rss, stat, time (not in every build: retried without) and args. It has no start time.
- Windows: ``tasklist /v /fo csv`` read by :func:`agent.parsers.tasklist.parse_tasklist`.

Every command runs under ``env LC_ALL=C TZ=UTC0`` so that names, dates and decimals are in
one known form whatever the host's locale, and start times are read as UTC.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.contract import (
    MAX_COMMAND_CHARS,
    MAX_RAW_OUTPUT_CHARS,
    ProcessSample,
    Snapshot,
    replace_nul,
)
from agent.errors import CollectError
from agent.parsers import ps_columns as col
from agent.parsers.ps import FORMAT_BSD, FORMAT_BUSYBOX, FORMAT_PROCPS, parse_table
from agent.parsers.result import ParseResult

log = logging.getLogger(__name__)

CommandRunner = Callable[[Sequence[str]], Awaitable[str]]
COMMAND_TIMEOUT_S = 20.0  # tasklist /v asks every window for its title: seconds on a busy host
STDERR_TAIL_CHARS = 500
_ENV = ("env", "LC_ALL=C", "TZ=UTC0")
PROCPS_COMM_CHARS = 64  # kernel threads' names pass the 15 characters of TASK_COMM_LEN
BUSYBOX_COMM_CHARS = 16  # BusyBox's fixed comm width
BUSYBOX_USER_HEADER = "USER".ljust(32)  # BusyBox widens a column to its header (default 8)


class CommandFailed(CollectError):
    """The process-table command could not be run or exited with an error."""

    def __init__(self, argv: Sequence[str], reason: str, stderr: str = "") -> None:
        self.argv, self.reason = list(argv), reason
        self.stderr_tail = stderr.strip()[-STDERR_TAIL_CHARS:]
        detail = f": {self.stderr_tail}" if self.stderr_tail else ""
        super().__init__(f"{' '.join(self.argv)!r} {reason}{detail}")


async def run_command(argv: Sequence[str], *, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run ``argv`` and return its standard output; ``CommandFailed`` on a missing program,
    a non-zero exit or a timeout (the process is killed)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandFailed(argv, f"cannot start: {exc}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise CommandFailed(argv, f"timed out after {timeout_s:g} s") from exc
    if proc.returncode != 0:
        raise CommandFailed(argv, f"exited with {proc.returncode}", _decode(stderr))
    return _decode(stdout)


def _decode(data: bytes) -> str:
    if sys.platform == "win32":  # tasklist writes the console's code page, not UTF-8
        from agent.parsers import decode_output

        return decode_output(data)
    return data.decode("utf-8", errors="replace")


@dataclass
class ProcessTable:
    """The processes of one collection and the snapshot that describes its raw output."""

    processes: list[ProcessSample]
    snapshot: Snapshot


@dataclass(frozen=True)
class _Plan:
    """One command to try and how to read its output."""

    argv: tuple[str, ...]
    source: str  # Snapshot.source
    header: tuple[str, ...] | None  # expected header labels (None: not checked)
    parse: Callable[[str, datetime], ParseResult]


def _ps_plan(ps_args: Sequence[str], columns: list[col.Column], fmt: str,
             header: Sequence[str] | None) -> _Plan:
    def parse(text: str, now: datetime) -> ParseResult:
        return parse_table(text, columns, format=fmt, now=now, tz=UTC)

    return _Plan((*_ENV, "ps", *ps_args), "ps", tuple(header) if header else None, parse)


_REST = [col.PID, col.PPID, col.USER, col.START, col.CPU_TIME, col.RSS, col.VSZ, col.STATE,
         col.TTY, col.CPU_PERCENT, col.MEMORY_PERCENT, col.COMMAND]
PROCPS_PLAN = _ps_plan(
    ["-e", "-ww", "-o", f"comm:{PROCPS_COMM_CHARS},pid,ppid,user:{col.MAX_USER_CHARS},lstart,time,"
     "rss,vsz,stat,tty,%cpu,%mem,args"],
    [col.fixed_width(PROCPS_COMM_CHARS, "comm"), *_REST], FORMAT_PROCPS,
    ["COMMAND", "PID", "PPID", "USER", "STARTED", "TIME", "RSS", "VSZ", "STAT", "TT", "%CPU",
     "%MEM", "COMMAND"],
)
BSD_PLAN = _ps_plan(
    ["-axww", "-o", "pid,ppid,user,lstart,time,rss,vsz,stat,tty,%cpu,%mem,args"],
    _REST, FORMAT_BSD, None,
)


def _busybox_plan(with_time: bool) -> _Plan:
    time_spec, time_column = (",time", [col.CPU_TIME]) if with_time else ("", [])
    return _ps_plan(
        ["-o", "comm,pid,ppid", "-o", f"user={BUSYBOX_USER_HEADER}",
         "-o", f"vsz,rss,stat{time_spec},args"],
        [col.fixed_width(BUSYBOX_COMM_CHARS, "comm"), col.PID, col.PPID, col.USER, col.VSZ,
         col.RSS, col.STATE, *time_column, col.COMMAND],
        FORMAT_BUSYBOX,
        ["COMMAND", "PID", "PPID", "USER", "VSZ", "RSS", "STAT", *(["TIME"] * with_time),
         "COMMAND"],
    )


BUSYBOX_PLANS = [_busybox_plan(with_time=True), _busybox_plan(with_time=False)]


def _parse_tasklist(text: str, now: datetime) -> ParseResult:
    from agent.parsers.tasklist import parse_tasklist  # only Windows agents need it

    return parse_tasklist(text, now=now, tz=None)


TASKLIST_PLAN = _Plan(("tasklist", "/v", "/fo", "csv"), "tasklist", None, _parse_tasklist)


def plans_for(os_type: str) -> list[_Plan]:
    """The commands to try, in order, on a host of ``os_type`` (``Host.os_type``)."""
    if os_type == "windows":
        return [TASKLIST_PLAN]
    if os_type == "linux":
        return [PROCPS_PLAN, *BUSYBOX_PLANS]
    if os_type in ("darwin", "freebsd", "openbsd", "netbsd"):
        return [BSD_PLAN]
    return [PROCPS_PLAN, BSD_PLAN, *BUSYBOX_PLANS]


async def collect_process_table(
    *,
    os_type: str,
    runner: CommandRunner = run_command,
    scrub: Callable[[str], str] = lambda s: s,
    keep_raw: bool = False,
    now: datetime | None = None,
) -> ProcessTable:
    """Run the process-table command of ``os_type`` and parse it.

    ``scrub`` is applied to every command line and to the raw output; the snapshot's
    ``sha256`` is that of the scrubbed output, which ``raw_output`` holds when ``keep_raw``.
    Raises ``CollectError`` (``CommandFailed`` with the command and its stderr) when no
    command works.
    """
    now = now or datetime.now(UTC)
    failures: list[CollectError] = []
    for plan in plans_for(os_type):
        started = time.perf_counter()
        try:
            # The contract refuses a NUL (PostgreSQL text cannot hold one): replace it here.
            text = replace_nul(await runner(plan.argv))
            _check_header(plan, text)
        except CollectError as exc:  # e.g. BusyBox refusing procps' options: try the next
            log.debug("process table command failed", extra={"kv": {"error": str(exc)}})
            failures.append(exc)
            continue
        result = plan.parse(text, now)
        table = _table(plan, text, result, scrub, keep_raw)
        log.debug(
            "process table",
            extra={"kv": {"format": result.format, "processes": len(result.processes),
                          "unparsed_lines": result.unparsed_lines,
                          "collect_ms": round((time.perf_counter() - started) * 1000, 1)}},
        )
        if result.unparsed_lines:
            log.warning("process table lines not parsed", extra={"kv": {
                "unparsed_lines": result.unparsed_lines, "first_error": result.errors[0]}})
        return table
    raise failures[0] if len(failures) == 1 else CollectError(
        "no process-table command worked: " + "; ".join(str(f) for f in failures))


def _check_header(plan: _Plan, text: str) -> None:
    if plan.header is None:
        return
    header = tuple(text.split("\n", 1)[0].split())
    if header != plan.header:
        raise CommandFailed(plan.argv, f"printed an unexpected header {' '.join(header)!r}")


def _table(plan: _Plan, text: str, result: ParseResult, scrub: Callable[[str], str],
           keep_raw: bool) -> ProcessTable:
    processes = [
        p.model_copy(update={"command": scrub(p.command)[:MAX_COMMAND_CHARS]})
        for p in result.processes
    ]
    # Line by line: a flag at the end of one row must not mask the next row's name, and it is
    # ~10x cheaper than one pass over the whole text (45 -> 4 ms for 300 processes).
    raw = "\n".join(scrub(line) for line in text.split("\n"))
    if keep_raw and len(raw) > MAX_RAW_OUTPUT_CHARS:
        log.warning("raw process table too long to keep", extra={"kv": {"chars": len(raw)}})
        keep_raw = False
    snapshot = Snapshot(
        source=plan.source,  # type: ignore[arg-type]
        sha256=hashlib.sha256(raw.encode("utf-8", errors="replace")).hexdigest(),
        process_count=len(processes),
        unparsed_lines=result.unparsed_lines,
        raw_output=raw if keep_raw else None,
    )
    return ProcessTable(processes=processes, snapshot=snapshot)
