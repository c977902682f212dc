"""``ps`` output -> processes: procps (Linux), macOS/BSD and BusyBox, detected by the header.

Accepted: any ps table whose header names its columns and ends with the command, e.g.
``ps aux`` / ``ps auxww`` / ``ps auxf``, ``ps -ef``, ``ps -e``, ``ps -l``, ``ps -eo ...`` (procps);
``ps aux``, ``ps -ef``, ``ps -axo ...`` (macOS, FreeBSD); ``ps``, ``ps -o ...``, ``ps l`` (BusyBox).
A new header line starts a new table, so concatenated outputs parse too. The columns are
described in :mod:`agent.parsers.ps_columns`, the time formats in :mod:`agent.parsers.clock`.

``name`` is the executable's basename, from the command:

- a kernel thread or a zombie ``[kworker/0:1]`` / ``[sh] <defunct>``: the text in brackets;
  BusyBox's ``{comm} args`` (a renamed thread): the text in braces; ``(bash)`` (BSD, when
  the arguments are not readable): the text in parentheses;
- a macOS bundle (the path has spaces): the name after the last ``.app/Contents/MacOS/`` --
  the bundle's own name when the path continues with it (``.../Google Chrome.app/Contents/
  MacOS/Google Chrome --type=renderer`` -> ``Google Chrome``), else the text up to `` -``;
- otherwise the first word: its basename, without the ``-`` of a login shell (``-bash``) or
  the ``:`` of a retitled process (``postgres: checkpointer`` -> ``postgres``).

Other spaces in a path cannot be told from those between arguments: apart from
``Application Support``, a path with spaces outside an app bundle is cut at its first space.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, tzinfo

from agent.parsers.clock import Clock
from agent.parsers.ps_columns import (
    COMM_LAST,
    COMMAND_LABELS,
    LABELS,
    Column,
    columns_for_header,
    read_row,
)
from agent.parsers.result import ParseResult
from agent.rows import MAX_COMMAND_CHARS, MAX_NAME_CHARS, ProcessSample

FORMAT_PROCPS = "ps-procps"
FORMAT_BSD = "ps-bsd"
FORMAT_BUSYBOX = "ps-busybox"
FORMAT_UNKNOWN = "ps"

_HEADER_SEARCH_LINES = 5  # a saved output may start with the prompt and the command
_APP_EXECUTABLE = ".app/Contents/MacOS/"
_BSD_CPU_TIME = re.compile(r"\s\d+:\d\d\.\d\d\s")
_BUSYBOX_SIZE = re.compile(r"\s\d+(?:\.\d)?[mgt]\s")
# Directories with a space in their name that executables commonly live under (macOS).
_SPACED_DIRS = ("/Application Support/",)
_BUSYBOX_LONG_HEADER = ["S", "UID", "PID", "PPID", "VSZ", "RSS", "TTY", "STIME", "TIME", "CMD"]
_DEFUNCT = " <defunct>"


def _header_labels(line: str) -> list[str] | None:
    """The labels of ``line`` if it is a ps header: a PID column, the command last, and only
    known, upper-case or capitalised labels (BusyBox's oldest ps writes ``Uid``, ``Command``)."""
    labels = line.split()
    if len(labels) < 2 or labels[-1].upper() not in COMMAND_LABELS:
        return None
    if "PID" not in (label.upper() for label in labels):
        return None
    if not all(label.upper() in LABELS or label.isupper() or label.istitle() for label in labels):
        return None
    return labels


def _may_be_header(line: str) -> bool:
    return "PID" in line or "Pid" in line or "pid" in line  # cheap test before splitting


def looks_like_ps(text: str) -> bool:
    """Whether ``text`` is a ps output: one of its first lines is a ps header."""
    return _find_header(_lazy_lines(text.lstrip("\ufeff"))) is not None


def _lazy_lines(text: str) -> Iterator[str]:
    """Lines split on ``\n`` only, without splitting the whole text (detection reads a few)."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def _find_header(lines: Iterable[str]) -> int | None:
    seen = 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        if _header_labels(line) is not None:
            return index
        seen += 1
        if seen >= _HEADER_SEARCH_LINES:
            return None
    return None


def detect_flavour(labels: Sequence[str], rows: Iterable[str] = ()) -> str:
    """``ps-procps`` / ``ps-bsd`` / ``ps-busybox`` from the header and, for headers all
    flavours share, the first rows: only BSD prints hundredths of a second, only BusyBox
    sizes like ``12m``."""
    upper = [label.upper() for label in labels]
    if upper[:2] == ["PID", "USER"] or upper == _BUSYBOX_LONG_HEADER:
        return FORMAT_BUSYBOX
    if "STARTED" in upper and "TT" in upper and "%CPU" in upper:
        return FORMAT_BSD
    rows = [f" {row} " for row in rows]
    if any(_BSD_CPU_TIME.search(row) for row in rows):
        return FORMAT_BSD
    if any(_BUSYBOX_SIZE.search(row) for row in rows):
        return FORMAT_BUSYBOX
    return FORMAT_PROCPS


def _columns(labels: list[str], flavour: str) -> list[Column]:
    columns = columns_for_header(labels)
    upper = {label.upper() for label in labels}
    # procps ``ps -e`` / ``ps -l`` print the short name (comm) under CMD; ``-f`` prints the
    # command line there and adds STIME.
    if flavour == FORMAT_PROCPS and labels[-1].upper() == "CMD" and "STIME" not in upper:
        columns[-1] = COMM_LAST
    return columns


def parse_ps(text: str, *, now: datetime | None = None, tz: tzinfo | None = None) -> ParseResult:
    """Parse a saved ps output. Never raises on bad input: each line that cannot be read is
    counted in ``unparsed_lines`` with its reason in ``errors``.

    Start times printed relative to the day (``09:41``, ``Tue02PM``, ``Jan05``) are resolved
    against ``now`` (default: the current time) in ``tz`` (default: the local zone).
    """
    clock = Clock.make(now, tz)
    lines = [line.rstrip("\r") for line in text.lstrip("\ufeff").split("\n")]
    first = _find_header(lines)
    if first is None:
        result = ParseResult(format=FORMAT_UNKNOWN)
        _reject_all(result, enumerate(lines, 1), "no ps header (PID ... COMMAND) found")
        return result
    labels = _header_labels(lines[first]) or []
    result = ParseResult(format=detect_flavour(labels, lines[first + 1 : first + 21]))
    _reject_all(result, enumerate(lines[:first], 1), "before the ps header")
    columns: list[Column] | None = None
    for line_no, line in enumerate(lines[first:], first + 1):
        if not line.strip():
            continue
        if _may_be_header(line) and (labels := _header_labels(line)) is not None:
            # the first header, or that of a concatenated output
            try:
                flavour = detect_flavour(labels, lines[line_no : line_no + 20])
                columns = _columns(labels, flavour)
            except ValueError as exc:
                columns = None
                result.reject(line_no, line, str(exc))
            continue
        if columns is None:
            result.reject(line_no, line, "under a header that cannot be read")
            continue
        add_row(result, line_no, line, columns, clock)
    return result


def parse_table(
    text: str,
    columns: Sequence[Column],
    *,
    format: str,
    now: datetime | None = None,
    tz: tzinfo | None = None,
) -> ParseResult:
    """Parse the output of a ps command whose columns are known (the agent's own command):
    the first line is the header and is skipped."""
    clock = Clock.make(now, tz)
    result = ParseResult(format=format)
    for line_no, line in enumerate(text.split("\n")[1:], 2):
        line = line.rstrip("\r")
        if line.strip():
            add_row(result, line_no, line, columns, clock)
    return result


def _reject_all(result: ParseResult, numbered: Iterable[tuple[int, str]], reason: str) -> None:
    for line_no, line in numbered:
        if line.strip():
            result.reject(line_no, line, reason)


def add_row(
    result: ParseResult, line_no: int, line: str, columns: Sequence[Column], clock: Clock
) -> None:
    """Read one row into ``result``, or reject it with the reason."""
    try:
        values = read_row(line, columns, clock)
        command = str(values.pop("command", ""))
        comm = values.pop("comm", None)
        name = name_of(command, str(comm) if comm is not None else None)
        if not name:
            raise ValueError("no command")
        if not command:
            command = str(comm)
        result.processes.append(
            ProcessSample(name=name, command=command[:MAX_COMMAND_CHARS], **values)  # type: ignore[arg-type]
        )
    except ValueError as exc:  # RowInvalid (a value out of the contract's bounds) included
        result.reject(line_no, line, str(exc))


def name_of(command: str, comm: str | None = None) -> str:
    """The process name: ``comm`` when ps printed it, else derived from the command line
    (rules in the module docstring). Empty when there is nothing to name it by."""
    if comm:
        return comm.removesuffix(_DEFUNCT).strip()[:MAX_NAME_CHARS]
    text = command.removesuffix(_DEFUNCT).strip()
    if not text:
        return ""
    for opening, closing in ("[]", "{}"):
        if text[0] == opening and closing in text:
            inner = text[1 : text.index(closing)].strip()
            if inner:
                return inner[:MAX_NAME_CHARS]
    if text[0] == "(" and text[-1] == ")" and len(text) > 2:
        return text[1:-1].strip()[:MAX_NAME_CHARS]
    if _APP_EXECUTABLE in text:
        return _app_name(text)[:MAX_NAME_CHARS]
    for spaced in _SPACED_DIRS:
        text = text.replace(spaced, spaced.replace(" ", "\0"))
    first = text.split(None, 1)[0].replace("\0", " ")
    name = first.rstrip(":").rsplit("/", 1)[-1]
    if name.startswith("-") and len(name) > 1:
        name = name[1:]
    return (name or first)[:MAX_NAME_CHARS]


def _app_name(command: str) -> str:
    bundle_end = command.rindex(_APP_EXECUTABLE)
    bundle = command[:bundle_end].rsplit("/", 1)[-1]
    executable = command[bundle_end + len(_APP_EXECUTABLE) :]
    if bundle and (executable == bundle or executable.startswith(bundle + " ")):
        return bundle
    return executable.split(" -", 1)[0].strip() or bundle
