"""Windows ``tasklist`` output -> processes.

Accepts every form people save: the table (default and ``/v``), ``/fo csv`` (with or without
``/v`` and ``/nh``) and ``/fo list``, in English, German, French or Spanish (other languages
read by column position), with the locale's thousands separator in Mem Usage (``4,912 K``,
``5.024 K``, ``4 912 Ko``) and image names with spaces. The forms live in ``tasklist_table``,
``tasklist_csv`` and ``tasklist_list``; cell conversion in ``tasklist_fields``.

tasklist prints no command line and no start time: ``command`` is the image name and
``start_time`` stays None. ``ParseResult.format`` names the form: ``tasklist-table``,
``tasklist-csv`` or ``tasklist-list`` (``tasklist`` when the text is none of them).
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo

from agent.parsers.result import ParseResult
from agent.parsers.tasklist_csv import has_pid_label, is_header, parse_csv, split_csv_line
from agent.parsers.tasklist_fields import positional_columns
from agent.parsers.tasklist_list import parse_list, split_label
from agent.parsers.tasklist_table import INFO_RE, ROW_RE, SEPARATOR_RE, parse_table

FORMAT = "tasklist"
_SNIFF_LINES = 20
_SNIFF_CHARS = 64 * 1024
# A console prompt copied along with the output: "C:\Users\alice>tasklist /v", "PS C:\> ..."
_PROMPT_RE = re.compile(r"^(?:PS )?[A-Za-z]:\\[^>]*>")


def _first_lines(text: str) -> list[str]:
    """The first non-blank lines but prompts, enough to tell the form."""
    head = text[:_SNIFF_CHARS].lstrip("\ufeff").splitlines()
    return [line for line in head if line.strip() and not _PROMPT_RE.match(line)][:_SNIFF_LINES]


def _form(lines: list[str]) -> str | None:
    """``table`` / ``csv`` / ``list`` from the first non-blank lines; None if not tasklist."""
    if not lines:
        return None
    if any(SEPARATOR_RE.match(line) for line in lines):
        return "table"
    first = lines[0].strip()
    quoted = first.startswith('"')
    if quoted or "," in first or ";" in first:
        cells = split_csv_line(first) or []
        # Unquoted (re-saved by a spreadsheet) it needs a PID header cell or a numeric PID.
        if has_pid_label(cells) or _is_csv_row(cells) or (quoted and is_header(cells)):
            return "csv"
        if quoted:
            return None
    if len(lines) >= 2:
        first_pair, second_pair = split_label(lines[0]), split_label(lines[1])
        if first_pair and second_pair and second_pair[0].upper() == "PID":
            return "list"
    if INFO_RE.match(first):
        return "table"  # "INFO: No tasks are running which match the specified criteria."
    # Table with /nh: most rows match the header-less row pattern.
    rows = lines[:10]
    if sum(1 for line in rows if ROW_RE.match(line)) * 3 >= len(rows) * 2:
        return "table"
    return None


def _is_csv_row(cells: list[str]) -> bool:
    return positional_columns(len(cells)) is not None and cells[1].strip().isdigit()


def looks_like_tasklist(text: str) -> bool:
    """Whether ``text`` is a tasklist output (any form). Reads only the first lines."""
    return _form(_first_lines(text)) is not None


def parse_tasklist(
    text: str, *, now: datetime | None = None, tz: tzinfo | None = None
) -> ParseResult:
    """Parse a tasklist output. Never raises on bad input: a line that cannot be read is
    counted in ``unparsed_lines`` and described in ``errors``.

    ``now`` and ``tz`` are accepted for symmetry with ``parse_ps``; tasklist prints no times.
    """
    del now, tz
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    form = _form(_first_lines(text))
    result = ParseResult(format=f"{FORMAT}-{form}" if form else FORMAT)
    if form == "csv":
        parse_csv(lines, result)
    elif form == "list":
        parse_list(lines, result)
    else:  # the table parser also rejects, line by line, a text that is no tasklist at all
        parse_table(lines, result)
    return result
