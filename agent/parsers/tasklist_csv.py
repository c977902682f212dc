"""The ``/fo csv`` form of ``tasklist``, with or without ``/v`` and ``/nh``, in any language."""

from __future__ import annotations

import csv
import re

from agent.parsers.result import ParseResult
from agent.parsers.tasklist_fields import (
    RowError,
    build_sample,
    columns_for_header,
    positional_columns,
)

_DIGITS_RE = re.compile(r"^\s*[0-9]+\s*$")


def split_csv_line(line: str) -> list[str] | None:
    """Cells of one CSV line; None when it is not well-formed CSV."""
    line = line.strip()
    # Fast path for what tasklist prints: every cell quoted, no quote inside a cell.
    if len(line) >= 2 and line[0] == '"' and line[-1] == '"':
        inner = line[1:-1]
        if inner.count('"') == 2 * inner.count('","'):
            return inner.split('","')
    # Lines are read one at a time so that a stray quote cannot swallow the lines after it.
    try:
        delimiter = ";" if line.count(";") > line.count(",") else ","
        return next(csv.reader([line], delimiter=delimiter, strict=True), None)
    except csv.Error:
        return None


def has_pid_label(cells: list[str]) -> bool:
    """Whether a row has a ``PID`` cell (the same word in every language we know)."""
    return any(cell.strip().upper() == "PID" for cell in cells)


def is_header(cells: list[str]) -> bool:
    """A header row: it has a ``PID`` cell, or the 5 or 9 cells of a tasklist header with a
    label where the PID goes (a language that translates "PID")."""
    if len(cells) < 2 or _DIGITS_RE.match(cells[1]):
        return False
    return has_pid_label(cells) or positional_columns(len(cells)) is not None


def parse_csv(lines: list[str], result: ParseResult) -> None:
    """Parse CSV lines into ``result`` (rows it cannot read are rejected)."""
    columns: tuple[str, ...] | None = None
    header: list[str] | None = None
    first_row = True
    for index, line in enumerate(lines):
        line_no = index + 1
        if not line.strip():
            continue
        cells = split_csv_line(line)
        if cells is None:
            result.reject(line_no, line, "not a CSV row")
            continue
        # Outputs appended together repeat the header; each one applies to the rows after it.
        # Past the first row only an exact repeat or a "PID" header counts as one.
        was_first, first_row = first_row, False
        if is_header(cells) and (was_first or cells == header or has_pid_label(cells)):
            header = cells
            columns = columns_for_header(cells)
            continue
        row_columns = columns if header is not None else positional_columns(len(cells))
        try:
            if row_columns is None:
                raise RowError(
                    f"unsupported tasklist columns {header}"
                    if header is not None
                    else f"a tasklist CSV row has 5 or 9 cells, not {len(cells)}"
                )
            if len(cells) != len(row_columns):
                raise RowError(f"{len(cells)} cells where the header has {len(row_columns)}")
            result.processes.append(build_sample(dict(zip(row_columns, cells, strict=True))))
        except RowError as exc:
            result.reject(line_no, line, str(exc))
