"""`procfleet ps QUERY`: where a process runs or ran, from ``GET /api/processes/search``.

Settings, HTTP and errors are ``procfleet top``'s (``gateway_settings``, ``fetch_json``):
``$PROCFLEET_GATEWAY_URL`` and a ``read`` token in ``$PROCFLEET_TOKEN``. ``--json`` prints the
API's answer as it is. Exit codes: 0 ok, 1 the gateway refused or could not be reached, 2 bad
usage or settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from procfleet.commands.top import TIMEOUT_S, TopError, fetch_json, gateway_settings

if TYPE_CHECKING:
    import httpx

SEARCH_PATH = "/api/processes/search"
MAX_QUERY_CHARS = 256
MAX_COMMAND_CHARS = 60
COLUMNS = (("HOST", "<"), ("PID", ">"), ("STARTED", "<"), ("NAME", "<"), ("COMMAND", "<"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", metavar="QUERY",
                        help="text to find in process names and command lines (literal, "
                             "case-insensitive)")
    parser.add_argument("--hours", type=int, default=1, metavar="H",
                        help="processes alive in the last H hours, 1-168 (default 1)")
    parser.add_argument("--server", action="append", dest="servers", metavar="ID",
                        help="only this server (repeatable; default all servers)")
    parser.add_argument("--limit", type=int, default=100, help="at most this many, 1-1000")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _clock(text: str | None) -> str:
    if text is None:
        return "?"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def format_table(doc: dict[str, Any]) -> str:
    """host, pid, start time (UTC), name and the command line cut to a terminal's width."""
    processes = doc["processes"]
    more = " (more matched: --limit)" if doc.get("truncated") else ""
    lines = [f"{len(processes)} processes matching {doc['q']!r} · "
             f"{_clock(doc['from'])} → {_clock(doc['to'])} UTC{more}"]
    if not processes:
        lines.append("no process matched in this window")
        return "\n".join(lines)
    rows = [[p["hostname"] or p["server_id"], str(p["pid"]), _clock(p["start_time"]),
             _shorten(p["name"], 24), _shorten(" ".join(p["command"].split()),
                                               MAX_COMMAND_CHARS)]
            for p in processes]
    widths = [max(len(title), *(len(r[i]) for r in rows)) for i, (title, _) in enumerate(COLUMNS)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{cell:{align}{width}}" for cell, (_, align), width
                         in zip(cells, COLUMNS, widths, strict=True)).rstrip()

    lines.append(line([title for title, _ in COLUMNS]))
    lines.extend(line(r) for r in rows)
    return "\n".join(lines)


def main(args: argparse.Namespace, env: Mapping[str, str], *, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr, transport: httpx.BaseTransport | None = None) -> int:
    """The command with its side effects injectable (tests pass a transport)."""
    import httpx
    import orjson

    url, token, problems = gateway_settings(env)
    if not args.query.strip() or len(args.query) > MAX_QUERY_CHARS:
        problems.append(f"QUERY must have 1 to {MAX_QUERY_CHARS} characters")
    if not 1 <= args.hours <= 168:
        problems.append(f"--hours must be between 1 and 168, got {args.hours}")
    if not 1 <= args.limit <= 1000:
        problems.append(f"--limit must be between 1 and 1000, got {args.limit}")
    if problems:
        for problem in problems:
            print(f"procfleet ps: {problem}", file=err)
        return 2
    params = [("q", args.query), ("hours", str(args.hours)), ("limit", str(args.limit))]
    params += [("server_ids[]", server) for server in args.servers or []]
    with httpx.Client(base_url=url, timeout=TIMEOUT_S, transport=transport,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        try:
            doc = fetch_json(client, SEARCH_PATH, params)
        except TopError as exc:
            print(f"procfleet ps: {exc}", file=err)
            return 1
    print(orjson.dumps(doc).decode() if args.json else format_table(doc), file=out)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return main(args, os.environ)
    except KeyboardInterrupt:
        return 0
