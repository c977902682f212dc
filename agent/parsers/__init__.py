"""Parsers of the process tables people already have: ``ps`` (procps, macOS/BSD, BusyBox) and
Windows ``tasklist`` (table, ``/v``, ``/fo csv``, ``/fo list``, localized).

Pure functions of text (no I/O), shared by ``procfleet parse`` and the gateway::

    parse_output(text, fmt="auto") -> ParseResult   # fmt: "auto" | "ps" | "tasklist"
    detect_format(text) -> "ps" | "tasklist"          # ParseError when it is neither
    decode_output(raw_bytes) -> str                   # UTF-8/UTF-16 (BOM) or Windows code page

A line that cannot be read is counted in ``ParseResult.unparsed_lines``; ``ParseError`` is
raised only when the text as a whole is not recognisable.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Literal

from agent.errors import ParseError
from agent.parsers.result import ParseResult

Format = Literal["ps", "tasklist"]
FORMATS: tuple[str, ...] = ("auto", "ps", "tasklist")

__all__ = ["FORMATS", "ParseResult", "decode_output", "detect_format", "parse_output"]


def _first_line(text: str) -> str:
    for line in text.lstrip("\ufeff").splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


def detect_format(text: str) -> Format:
    """Tell ps output from tasklist output by their first lines. Raises ``ParseError``
    (naming what was seen) when the text is neither."""
    # Imported here so that importing agent.parsers.result (every collector does) stays cheap
    # and the format modules may import this package without a cycle.
    from agent.parsers.ps import looks_like_ps
    from agent.parsers.tasklist import looks_like_tasklist

    if not text.strip():
        raise ParseError("no ps or tasklist output: the text is empty")
    # tasklist first: its markers (==== separator, quoted CSV, "PID:" label) are unambiguous.
    if looks_like_tasklist(text):
        return "tasklist"
    if looks_like_ps(text):
        return "ps"
    raise ParseError(
        f"neither ps nor tasklist output ({len(text.splitlines())} lines), "
        f"first line: {_first_line(text)!r}"
    )


def parse_output(
    text: str,
    fmt: str = "auto",
    *,
    now: datetime | None = None,
    tz: tzinfo | None = None,
) -> ParseResult:
    """Parse a ps or tasklist output. ``fmt="auto"`` detects it (``ParseError`` if it cannot);
    with an explicit format every line that does not fit is counted, never raised.
    ``now`` / ``tz`` resolve the relative start times of ps (e.g. ``9:41``)."""
    if fmt not in FORMATS:
        raise ParseError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    chosen = detect_format(text) if fmt == "auto" else fmt
    if chosen == "tasklist":
        from agent.parsers.tasklist import parse_tasklist

        return parse_tasklist(text, now=now, tz=tz)
    from agent.parsers.ps import parse_ps

    return parse_ps(text, now=now, tz=tz)


def decode_output(raw: bytes) -> str:
    """Bytes of a saved output -> text. A BOM decides (PowerShell ``>`` writes UTF-16);
    otherwise UTF-8, and failing that the Windows code page the bytes fit: ``cmd > file``
    writes the OEM page (cp850: accented letters in 0x80-0x9F), editors write cp1252."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", errors="replace")
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="replace")
    head = raw[:512]
    if head and head.count(0) * 4 >= len(head):  # UTF-16 without a BOM: every other byte 0
        little_endian = head[1::2].count(0) >= head[0::2].count(0)
        return raw.decode("utf-16-le" if little_endian else "utf-16-be", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if any(0x80 <= byte <= 0x9F for byte in raw):
        return raw.decode("cp850")
    return raw.decode("cp1252", errors="replace")
