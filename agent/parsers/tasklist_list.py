"""The ``/fo list`` form of ``tasklist``: one ``Label: value`` line per column, one record per
process, records separated by a blank line. Labels are translated, so a record maps by label
when every label is known and by position (5 or 9 lines) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.parsers.result import ParseResult
from agent.parsers.tasklist_fields import (
    RowError,
    build_sample,
    field_for_label,
    positional_columns,
)
from agent.parsers.tasklist_table import INFO_RE


@dataclass
class _Record:
    first_line_no: int
    labels: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def split_label(line: str) -> tuple[str, str] | None:
    """``"Mem Usage:    4,912 K"`` -> ``("Mem Usage", "4,912 K")``; None without a label."""
    label, colon, value = line.partition(":")
    if not colon or not label.strip() or label[0].isspace():
        return None
    return label.strip(), value.strip()


def parse_list(lines: list[str], result: ParseResult) -> None:
    """Parse list-form lines into ``result`` (records it cannot read are rejected)."""
    record: _Record | None = None
    for index, line in enumerate(lines):
        line_no = index + 1
        if not line.strip() or INFO_RE.match(line):
            _finish(record, result)
            record = None
            continue
        pair = split_label(line)
        if pair is None:
            result.reject(line_no, line, "not a 'Label: value' line")
            continue
        label, value = pair
        # Without blank lines between records, the first label coming back starts a new one.
        if record is not None and label == record.labels[0]:
            _finish(record, result)
            record = None
        if record is None:
            record = _Record(first_line_no=line_no)
        record.labels.append(label)
        record.values.append(value)
        record.lines.append(line)
    _finish(record, result)


def _finish(record: _Record | None, result: ParseResult) -> None:
    if record is None:
        return
    try:
        result.processes.append(build_sample(_cells(record)))
    except RowError as exc:
        text = " | ".join(line.strip() for line in record.lines)
        result.reject(record.first_line_no, text, f"record: {exc}")
        result.unparsed_lines += len(record.lines) - 1  # every line of the record is unparsed


def _cells(record: _Record) -> dict[str, str]:
    fields = [field_for_label(label) for label in record.labels]
    if not all(fields) or len(set(fields)) != len(fields):
        positional = positional_columns(len(record.labels))
        if positional is None:
            raise RowError(f"a tasklist record has 5 or 9 lines, not {len(record.labels)}")
        fields = list(positional)
    return dict(zip(fields, record.values, strict=True))  # type: ignore[arg-type]
