"""The columns of a ps table: how each is read from a row and which contract field it fills.

A row is read left to right with a :class:`Cursor`. Every column but the last is one
whitespace-separated token, except a start time (``lstart`` takes 5 tokens, procps ``start``
may take 2) and a fixed-width column the agent asks for itself (``comm:64``); the command is
the rest of the line. Each reader validates its token and raises ``ValueError`` naming it, so
a row shifted by an overflowing column (a VSZ glued to RSS, a user name that ate the separator)
fails on the first column that no longer fits instead of giving a silently wrong row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.parsers.clock import LSTART_TOKENS, Clock, parse_cpu_seconds, parse_start
from agent.rows import MAX_PID

_TOKEN = re.compile(r"\S+")
_INT = re.compile(r"\d{1,10}")
_PERCENT = re.compile(r"\d{1,6}(?:[.,]\d{1,3})?")
# KiB, or BusyBox's shortened forms: 12m = 12 MiB, 1.2g = 1.2 GiB
_KIB = re.compile(r"(\d{1,19}|\d{1,4}\.\d{1,3}(?=[mgtpe]))([kmgtpe]?)", re.IGNORECASE)
_KIB_POWERS = {"": 0, "k": 0, "m": 1, "g": 2, "t": 3, "p": 4, "e": 5}
_STATE = re.compile(r"[A-Za-z<>+]{1,16}")
_TTY = re.compile(r"[\w/?,:.+-]{1,64}")
# "no tty" (BusyBox ``ps l`` prints device 0:0) / a field this ps could not fill
_NO_VALUE = frozenset({"-", "?", "??", "0:0"})
MAX_USER_CHARS = 64
# procps draws process trees (``ps auxf``) in front of the command: " \_ ", " |  "
_FOREST = re.compile(r"^(?:\s*(?:\\_|\|)(?=\s))+\s*")


class Cursor:
    """Reads one row token by token; ``ValueError`` when the row ends too early."""

    __slots__ = ("line", "pos")

    def __init__(self, line: str) -> None:
        self.line, self.pos = line, 0

    def token(self) -> str:
        match = _TOKEN.search(self.line, self.pos)
        if match is None:
            raise ValueError("row ends before the last column")
        self.pos = match.end()
        return match.group()

    def peek(self, count: int) -> list[str]:
        tokens, pos = [], self.pos
        for _ in range(count):
            match = _TOKEN.search(self.line, pos)
            if match is None:
                break
            tokens.append(match.group())
            pos = match.end()
        return tokens

    def skip(self, count: int) -> None:
        for _ in range(count):
            self.token()

    def chars(self, count: int) -> str:
        text = self.line[self.pos : self.pos + count]
        self.pos += count
        return text

    def rest(self) -> str:
        text = self.line[self.pos :].strip()
        self.pos = len(self.line)
        return text

    def at_end(self) -> bool:
        return self.pos >= len(self.line) or self.line[self.pos :].isspace()


Reader = Callable[[Cursor, Clock], object]


@dataclass(frozen=True)
class Column:
    """One column: the ``ProcessSample`` field it fills (``None``: read and ignored, ``comm``:
    the short process name) and how it is read."""

    field: str | None
    read: Reader
    last: bool = False  # takes the rest of the line


def _int(cursor: Cursor, _clock: Clock) -> int:
    text = cursor.token()
    if not _INT.fullmatch(text) or int(text) > MAX_PID:
        raise ValueError(f"bad process id {text!r}")
    return int(text)


def _optional_int(cursor: Cursor, clock: Clock) -> int | None:
    if cursor.peek(1) == ["-"]:
        cursor.skip(1)
        return None
    return _int(cursor, clock)


def _percent(cursor: Cursor, _clock: Clock) -> float | None:
    text = cursor.token()
    if text == "-":
        return None
    if not _PERCENT.fullmatch(text):
        raise ValueError(f"bad percentage {text!r}")
    return float(text.replace(",", "."))


def kib_to_bytes(text: str) -> int:
    """ps sizes are KiB; BusyBox shortens large ones to ``12m`` / ``1.2g`` (MiB / GiB)."""
    match = _KIB.fullmatch(text)
    if match is None:
        raise ValueError(f"bad size {text!r}")
    number, suffix = match.groups()
    return round(float(number) * 1024 ** _KIB_POWERS[suffix.lower()] * 1024)


def _kib(cursor: Cursor, _clock: Clock) -> int | None:
    text = cursor.token()
    return None if text == "-" else kib_to_bytes(text)


def _user(cursor: Cursor, _clock: Clock) -> str | None:
    text = cursor.token()
    if text == "-":
        return None
    # Longer than the contract allows (BSD prints names in full): keep procps' marker of a cut.
    return text if len(text) <= MAX_USER_CHARS else text[: MAX_USER_CHARS - 1] + "+"


def _tty(cursor: Cursor, _clock: Clock) -> str | None:
    text = cursor.token()
    if text in _NO_VALUE:
        return None
    if not _TTY.fullmatch(text):
        raise ValueError(f"bad tty {text!r}")
    return text


def _state(cursor: Cursor, _clock: Clock) -> str | None:
    text = cursor.token()
    if text == "-":
        return None
    if not _STATE.fullmatch(text):
        raise ValueError(f"bad process state {text!r}")
    return text


def _cpu_time(cursor: Cursor, _clock: Clock) -> float | None:
    text = cursor.token()
    return None if text == "-" else parse_cpu_seconds(text)


def _start(cursor: Cursor, clock: Clock) -> object:
    tokens = cursor.peek(LSTART_TOKENS)
    if tokens[:1] == ["-"]:
        cursor.skip(1)
        return None
    start, used = parse_start(tokens, clock)
    cursor.skip(used)
    return start


def _command(cursor: Cursor, _clock: Clock) -> str:
    return _FOREST.sub("", cursor.rest())


def _ignored(cursor: Cursor, _clock: Clock) -> None:
    cursor.token()


def fixed_width(chars: int, field: str) -> Column:
    """A left-aligned column of exactly ``chars`` characters (ps pads or cuts it), which may
    contain spaces: only usable as the first column, where its position is known."""
    return Column(field, lambda cursor, _clock: cursor.chars(chars).strip())


PID = Column("pid", _int)
PPID = Column("ppid", _optional_int)
USER = Column("user", _user)
CPU_PERCENT = Column("cpu_percent", _percent)
MEMORY_PERCENT = Column("memory_percent", _percent)
VSZ = Column("vsz_bytes", _kib)
RSS = Column("rss_bytes", _kib)
TTY = Column("tty", _tty)
STATE = Column("state", _state)
START = Column("start_time", _start)
CPU_TIME = Column("cpu_seconds_total", _cpu_time)
COMMAND = Column("command", _command, last=True)
COMM_LAST = Column("comm", _command, last=True)  # a short name printed last (``ps -e``'s CMD)
IGNORED = Column(None, _ignored)

# Header labels of procps, BSD and BusyBox (upper-cased) -> column. Labels not listed here are
# one token each and ignored (C, NI, PRI, WCHAN, ELAPSED, ...).
LABELS: dict[str, Column] = {
    "PID": PID,
    "PPID": PPID,
    **dict.fromkeys(("USER", "UID", "RUSER", "EUSER", "UNAME"), USER),
    **dict.fromkeys(("%CPU", "PCPU"), CPU_PERCENT),
    **dict.fromkeys(("%MEM", "PMEM"), MEMORY_PERCENT),
    **dict.fromkeys(("VSZ", "VSIZE"), VSZ),
    **dict.fromkeys(("RSS", "RSZ"), RSS),
    **dict.fromkeys(("TTY", "TT", "TNAME"), TTY),
    **dict.fromkeys(("STAT", "S", "STATE"), STATE),
    **dict.fromkeys(("START", "STIME", "STARTED", "LSTART"), START),
    **dict.fromkeys(("TIME", "CPUTIME"), CPU_TIME),
    **dict.fromkeys(("COMMAND", "CMD", "ARGS", "COMM", "UCOMM", "UCMD"), COMMAND),
}
COMMAND_LABELS = frozenset(k for k, column in LABELS.items() if column is COMMAND)


def columns_for_header(labels: Sequence[str]) -> list[Column]:
    """Columns of a header row (labels as printed). ``ValueError`` when there is no PID
    column, or the command is not the last column (a command with spaces in the middle of a
    row cannot be told from the columns after it)."""
    upper = [label.upper() for label in labels]
    if "PID" not in upper:
        raise ValueError("no PID column in the header")
    if not upper or upper[-1] not in COMMAND_LABELS:
        raise ValueError("the command is not the last column of the header")
    if any(label in COMMAND_LABELS for label in upper[:-1]):
        raise ValueError("a command column before the last column")
    columns: list[Column] = []
    seen: set[str | None] = set()
    for label in upper:
        column = LABELS.get(label, IGNORED)
        if column.field in seen:  # e.g. both USER and UID: the first one wins
            column = IGNORED
        seen.add(column.field)
        columns.append(column)
    return columns


def read_row(line: str, columns: Sequence[Column], clock: Clock) -> dict[str, object]:
    """One row -> field values; ``ValueError`` naming the first column that does not fit."""
    cursor = Cursor(line)
    values: dict[str, object] = {}
    for column in columns:
        value = column.read(cursor, clock)
        if column.field is not None and value is not None:
            values[column.field] = value
    if not columns[-1].last and not cursor.at_end():
        raise ValueError("more columns than the header")
    return values
