"""`procfleet export`: samples or rollups of a time window to Parquet / CSV (procfleet/export).

Reads ``$DATABASE_URL``. ``--from`` / ``--to``: RFC 3339 with a time zone, or a date
(``2026-01-01`` = its midnight UTC); the window is ``[from, to)``. Exit codes: 0 written,
1 the database failed, 2 bad arguments or settings (the message names the option and value).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO

SOURCE_NAMES = ("processes", "groups", "rollup-minute", "rollup-hour")
FORMATS = ("parquet", "csv")
MAX_SERVER_ID_CHARS = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", required=True, metavar="T",
                        help="window start, RFC 3339 (2026-01-01T00:00:00Z) or a UTC date")
    parser.add_argument("--to", dest="end", required=True, metavar="T",
                        help="window end (excluded), same forms")
    parser.add_argument("--source", choices=SOURCE_NAMES, default="processes",
                        help="what to export (default processes)")
    parser.add_argument("--format", dest="file_format", choices=FORMATS, default="parquet",
                        help="file format (default parquet)")
    parser.add_argument("--server", action="append", dest="servers", metavar="ID",
                        help="only this server (repeatable; default all servers)")
    parser.add_argument("--per-day", action="store_true",
                        help="one file per UTC day; --out is then a directory")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="the output file (or directory with --per-day)")


def parse_moment(option: str, raw: str) -> datetime:
    """A UTC instant from RFC 3339 with a zone, or a date (its midnight UTC)."""
    from procfleet.export.run import ExportError

    text = raw.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(option, "must be RFC 3339 (2026-01-01T10:00:00Z) or a date "
                          "(2026-01-01)", raw) from None
    if moment.tzinfo is None:
        raise ExportError(option, "must carry a time zone (Z or +HH:MM)", raw)
    return moment.astimezone(UTC)


def build_spec(args: argparse.Namespace):
    """The checked ``ExportSpec``, or ``ExportError`` naming the option and value."""
    from procfleet.export.run import ExportError, ExportSpec

    start, end = parse_moment("--from", args.start), parse_moment("--to", args.end)
    if end <= start:
        raise ExportError("--to", f"must be after --from ({args.start})", args.end)
    servers = tuple(dict.fromkeys(args.servers)) if args.servers else None
    for server in servers or ():
        if not server or len(server) > MAX_SERVER_ID_CHARS:
            raise ExportError("--server", f"must have 1 to {MAX_SERVER_ID_CHARS} characters",
                              server)
    out = Path(args.out)
    if args.per_day:
        if not out.is_dir():
            raise ExportError("--out", "with --per-day must be an existing directory", out)
    elif out.is_dir():
        raise ExportError("--out", "is a directory (use --per-day, or name a file)", out)
    elif not out.parent.is_dir():
        raise ExportError("--out", "its directory does not exist", out)
    return ExportSpec(start=start, end=end, source=args.source, file_format=args.file_format,
                      out=out, server_ids=servers, per_day=args.per_day)


def main(args: argparse.Namespace, env: Mapping[str, str], *, err: TextIO = sys.stderr) -> int:
    import asyncio

    import asyncpg

    from procfleet.export.run import ExportError, export

    database_url = env.get("DATABASE_URL", "").strip()
    if not database_url:
        print("procfleet export: DATABASE_URL must be the PostgreSQL URL to read", file=err)
        return 2
    try:
        spec = build_spec(args)
    except ExportError as exc:
        print(f"procfleet export: {exc}", file=err)
        return 2
    try:
        result = asyncio.run(export(database_url, spec, progress_stream=err))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"procfleet export: {type(exc).__name__}: {exc}", file=err)
        return 1
    for path in result.files:
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    return main(args, os.environ)
