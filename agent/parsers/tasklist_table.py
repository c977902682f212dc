"""The table form of ``tasklist`` (default and ``/v``), in any language.

Columns are cut at the widths of the ``=====`` separator line under the header, not at
whitespace: image names (``System Idle Process``), user names (``NT AUTHORITY\\SYSTEM``) and window
titles contain spaces, and localized headers are truncated to the column width. Without a
separator (``/nh``) a row is matched by a pattern anchored on the numeric columns.
"""

from __future__ import annotations

import re

from agent.parsers.result import ParseResult
from agent.parsers.tasklist_fields import RowError, build_sample, columns_for_header

SEPARATOR_RE = re.compile(r"^=+(?: +=+){2,} *$")
INFO_RE = re.compile(r"^INFO\w* ?:")  # "INFO: No tasks are running ..." (localized)

# A header-less row: name, PID, optional session name (never all digits), session number,
# memory, then with /v: status and user name (2+ spaces apart: the status column is padded),
# CPU time and the window title.
_MEMORY = r"N/A|[0-9]{1,3}(?:[,.'’ \u00a0\u202f][0-9]{3})*\s?(?:KB|Ko|K)|[0-9]+\s?(?:KB|Ko|K)"
ROW_RE = re.compile(
    r"^(?P<name>\S.*?)\s+(?P<pid>[0-9]+)"
    r"\s+(?:(?P<session_name>(?=\S*[^\s0-9])\S+)\s+)?(?P<session_id>[0-9]+)"
    rf"\s+(?P<memory>{_MEMORY})"
    r"(?:\s+(?P<state>\S+(?: \S+)*)\s{2,}(?P<user>\S+(?: \S+)*)"
    r"\s+(?P<cpu_time>[0-9]+:[0-5][0-9]:[0-5][0-9]|N/A)(?:\s+(?P<window_title>.*))?)?"
    r"\s*$"
)

Span = tuple[int, int | None]


def spans_of_separator(line: str) -> list[Span]:
    """Column spans under each run of ``=``; the last column runs to the end of the line."""
    spans: list[Span] = [(m.start(), m.end()) for m in re.finditer("=+", line)]
    spans[-1] = (spans[-1][0], None)
    return spans


def row_pattern(spans: list[Span]) -> re.Pattern[str]:
    """One pattern that cuts a row at ``spans`` and fails when a cell overflows into the gap
    between two columns. The last column may be absent (trailing spaces trimmed)."""
    pattern = "^"
    for index, (start, end) in enumerate(spans[:-1]):
        width, gap = (end or 0) - start, spans[index + 1][0] - (end or 0)
        if index < len(spans) - 2:
            pattern += f"(.{{{width}}}) {{{gap}}}"
        else:
            pattern += f"(.{{{width}}})(?: {{{gap}}}(.*))?"
    return re.compile(pattern + "$")


def _header_lines(lines: list[str]) -> dict[int, int]:
    """Index of each header line -> index of the separator line under it."""
    headers: dict[int, int] = {}
    previous = None
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        if SEPARATOR_RE.match(line) and previous is not None:
            headers[previous] = index
        previous = index
    return headers


def parse_table(lines: list[str], result: ParseResult) -> None:
    """Parse table-form lines into ``result`` (rows it cannot read are rejected)."""
    headers = _header_lines(lines)
    row_re: re.Pattern[str] | None = None
    columns: tuple[str, ...] | None = None
    header_text = ""
    for index, line in enumerate(lines):
        line_no = index + 1
        if not line or line.isspace() or (line.startswith("INFO") and INFO_RE.match(line)):
            continue
        if index in headers:
            header_text = line
            continue
        if line[0] == "=" and SEPARATOR_RE.match(line):
            spans = spans_of_separator(line)
            row_re = row_pattern(spans)
            # Header text is cut at the same widths: translated headers are truncated to them.
            columns = columns_for_header([header_text[a:b].strip() for a, b in spans])
            continue
        if row_re is None:
            _parse_headerless(line_no, line, result)
            continue
        if columns is None:
            result.reject(line_no, line, f"unsupported tasklist columns {header_text.split()}")
            continue
        match = row_re.match(line)
        if match is None:
            # A cell wider than its column (a hand-edited file) still reads when the row
            # matches the header-less pattern; otherwise it is rejected, never guessed.
            if not _parse_headerless(line_no, line, result, reject=False):
                result.reject(line_no, line, "row does not fit the columns of the ==== line")
            continue
        cells = [cell.strip() if cell else "" for cell in match.groups()]
        try:
            result.processes.append(build_sample(dict(zip(columns, cells, strict=True))))
        except RowError as exc:
            result.reject(line_no, line, str(exc))


def _parse_headerless(line_no: int, line: str, result: ParseResult, reject: bool = True) -> bool:
    match = ROW_RE.match(line)
    if match is None:
        if reject:
            result.reject(line_no, line, "not a tasklist row")
        return False
    cells = {key: value for key, value in match.groupdict().items() if value is not None}
    try:
        result.processes.append(build_sample(cells))
    except RowError as exc:
        if reject:
            result.reject(line_no, line, str(exc))
        return False
    return True
