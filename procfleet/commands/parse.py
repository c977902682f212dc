"""`procfleet parse FILE [--format auto|ps|tasklist]`: a saved ps / tasklist output -> JSON.

Prints a JSON array of processes (the report contract's field names) on stdout and a summary
(``format=... processes=N unparsed_lines=N``) plus the first unparsed lines on stderr. Exit code
0 when the output was parsed, 1 when the file cannot be read or is neither ps nor tasklist
output, or when not a single line of it could be parsed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_SHOWN_ERRORS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="saved ps or tasklist output; - for stdin")
    parser.add_argument(
        "--format",
        choices=("auto", "ps", "tasklist"),
        default="auto",
        help="what FILE holds (default: auto, detected from its first lines)",
    )
    parser.add_argument(
        "--encoding",
        default=None,
        help="text encoding of FILE (default: UTF-8/UTF-16 by BOM, else UTF-8, else the "
        "Windows code page)",
    )


def _read(path: str, encoding: str | None) -> str:
    from agent.parsers import decode_output

    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return raw.decode(encoding) if encoding else decode_output(raw)


def run(args: argparse.Namespace) -> int:
    from agent.errors import ParseError
    from agent.parsers import parse_output

    source = "stdin" if args.file == "-" else args.file
    try:
        text = _read(args.file, args.encoding)
    except (OSError, UnicodeDecodeError, LookupError) as exc:
        print(f"procfleet parse: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    try:
        result = parse_output(text, args.format)
    except ParseError as exc:
        print(f"procfleet parse: {source}: {exc}", file=sys.stderr)
        return 1

    processes = [process.model_dump(mode="json") for process in result.processes]
    try:
        json.dump(processes, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `procfleet parse x | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    print(
        f"format={result.format} processes={len(processes)} "
        f"unparsed_lines={result.unparsed_lines}",
        file=sys.stderr,
    )
    shown = result.errors[:_SHOWN_ERRORS]
    for error in shown:
        print(f"  {error}", file=sys.stderr)
    if len(result.errors) > len(shown):
        print(f"  ... (the first {len(shown)} shown)", file=sys.stderr)
    if not processes and result.unparsed_lines:
        print(
            f"procfleet parse: {source}: no line could be parsed as {result.format} output",
            file=sys.stderr,
        )
        return 1
    return 0
