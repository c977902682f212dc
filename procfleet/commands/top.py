"""`procfleet top`: the top-processes table from the gateway's query API.

The gateway is ``$PROCFLEET_GATEWAY_URL`` and the token (``read`` scope) ``$PROCFLEET_TOKEN``;
this module is the only place that reads them. ``--json`` prints the API's answer as it is;
``--watch N`` redraws the table every N seconds until Ctrl-C. Exit codes: 0 ok, 1 the
gateway refused or could not be reached, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from agent.errors import ConfigError, ProcfleetError
from agent.settings_loader import SECRET, Secret, Settings, setting, url

if TYPE_CHECKING:  # imported where used: `procfleet --help` stays light
    import httpx

TOP_PATH = "/api/processes/top"
TIMEOUT_S = 15.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"
COLUMNS = (("#", ">"), ("NAME", "<"), ("AVG CPU", ">"), ("PEAK CPU", ">"), ("AVG MEM", ">"),
           ("PEAK MEM", ">"), ("PROCS", ">"), ("SERVERS", ">"))
MAX_NAME_CHARS = 40


class TopError(ProcfleetError):
    """A refusal or transport error, with the message to print."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", choices=("cpu", "memory"), default="cpu",
                        help="rank by average CPU or average memory (default cpu)")
    parser.add_argument("--hours", type=int, default=1, metavar="H",
                        help="window ending now, 1-168 hours (default 1)")
    parser.add_argument("--server", action="append", dest="servers", metavar="ID",
                        help="only this server (repeatable; default all servers)")
    parser.add_argument("--limit", type=int, default=10, help="how many names, 1-50")
    parser.add_argument("--source", choices=("groups", "processes"), default=None,
                        help="process_exporter groups or ps/tasklist processes (default: "
                             "groups when there are any)")
    parser.add_argument("--watch", type=float, default=None, metavar="N",
                        help="redraw every N seconds until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def query_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    params = [("metric", args.metric), ("hours", str(args.hours)), ("limit", str(args.limit))]
    params += [("server_ids[]", server) for server in args.servers or []]
    if args.source:
        params.append(("source", args.source))
    return params


def fetch_top(client: httpx.Client, params: list[tuple[str, str]]) -> dict[str, Any]:
    """The API's answer, or ``TopError`` with the gateway's reason."""
    return fetch_json(client, TOP_PATH, params)


def fetch_json(client: httpx.Client, path: str, params: list[tuple[str, str]]
               ) -> dict[str, Any]:
    """GET ``path`` of the query API: its JSON answer, or ``TopError`` with the gateway's
    reason (shared by the API's command-line clients)."""
    import httpx

    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise TopError(f"cannot reach the gateway at {client.base_url}: {exc}") from None
    if response.status_code != 200:
        raise TopError(f"the gateway answered {response.status_code}: {error_reason(response)}")
    return response.json()


def error_reason(response: httpx.Response) -> str:
    """``field: reason`` of the gateway's JSON error body (or the start of another body)."""
    try:
        error = response.json()["error"]
        return f"{error.get('field')}: {error.get('reason')}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


@dataclass(frozen=True)
class ApiClientSettings(Settings):
    """What a client of the query API needs (``procfleet top``, ``procfleet mcp``)."""

    gateway_url: str | None = setting(
        None, "PROCFLEET_GATEWAY_URL", url("http", "https", strip_slash=True))
    token: Secret | None = setting(None, "PROCFLEET_TOKEN", SECRET)


def gateway_settings(env: Mapping[str, str]) -> tuple[str, str, list[str]]:
    """``PROCFLEET_GATEWAY_URL`` (without a trailing /), ``PROCFLEET_TOKEN``, and what is wrong
    with them (empty when both are usable). Shared by every client of the query API."""
    try:
        settings = ApiClientSettings.load(env)
    except ConfigError as exc:
        return "", "", [str(exc)]
    problems = []
    if settings.gateway_url is None:
        problems.append("PROCFLEET_GATEWAY_URL must be the gateway's http(s):// URL")
    if settings.token is None:
        problems.append("PROCFLEET_TOKEN must be a token with the read scope "
                        "(procfleet token create --scope read)")
    token = settings.token.get_secret_value() if settings.token else ""
    return settings.gateway_url or "", token, problems


def _cpu(value: float) -> str:
    return f"{value:.1f}%" if value < 1000 else f"{value:.0f}%"


def _memory(mb: float) -> str:
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.1f} MiB"


def _clock(text: str) -> str:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")


def format_table(doc: dict[str, Any]) -> str:
    """A readable table of the API's answer, with a header line saying what it shows."""
    processes = doc["processes"]
    lines = [f"top {len(processes)} by {doc['metric']} · {doc['source']} · "
             f"{_clock(doc['from'])} → {_clock(doc['to'])} "
             f"({doc['time_range_hours']:g} h, {doc.get('path', 'raw')})"]
    if not processes:
        lines.append("no samples in this window for these servers")
        return "\n".join(lines)
    rows = [[str(i), p["name"][:MAX_NAME_CHARS], _cpu(p["avg_cpu_percent"]),
             _cpu(p["peak_cpu_percent"]), _memory(p["avg_memory_mb"]),
             _memory(p["peak_memory_mb"]), f"{p['avg_num_procs']:.1f}", str(p["servers"])]
            for i, p in enumerate(processes, start=1)]
    widths = [max(len(title), *(len(r[i]) for r in rows))
              for i, (title, _) in enumerate(COLUMNS)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{cell:{align}{width}}" for cell, (_, align), width
                         in zip(cells, COLUMNS, widths, strict=True)).rstrip()

    lines.append(line([title for title, _ in COLUMNS]))
    lines.extend(line(r) for r in rows)
    lines.append("CPU: 100% = one core, summed over servers; memory: resident, averaged over "
                 "the window")
    return "\n".join(lines)


def main(args: argparse.Namespace, env: Mapping[str, str], *, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr, transport: httpx.BaseTransport | None = None,
         sleep: Callable[[float], None] = time.sleep, max_rounds: int | None = None) -> int:
    """The command with its side effects injectable (tests pass a transport and a sleep)."""
    import httpx
    import orjson

    url, token, problems = gateway_settings(env)
    if not 1 <= args.hours <= 168:
        problems.append(f"--hours must be between 1 and 168, got {args.hours}")
    if not 1 <= args.limit <= 50:
        problems.append(f"--limit must be between 1 and 50, got {args.limit}")
    if args.watch is not None and args.watch <= 0:
        problems.append(f"--watch must be a positive number of seconds, got {args.watch}")
    if problems:
        for problem in problems:
            print(f"procfleet top: {problem}", file=err)
        return 2
    params = query_params(args)
    rounds = 0
    with httpx.Client(base_url=url, timeout=TIMEOUT_S, transport=transport,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        while True:
            rounds += 1
            try:
                doc = fetch_top(client, params)
            except TopError as exc:
                print(f"procfleet top: {exc}", file=err)
                if args.watch is None:
                    return 1
                doc = None
            if doc is not None:
                text = (orjson.dumps(doc).decode() if args.json else format_table(doc))
                if args.watch is not None and not args.json and out.isatty():
                    out.write(CLEAR_SCREEN)
                print(text, file=out, flush=True)
            if args.watch is None or (max_rounds is not None and rounds >= max_rounds):
                return 0
            sleep(args.watch)


def run(args: argparse.Namespace) -> int:
    try:
        return main(args, os.environ)
    except KeyboardInterrupt:
        return 0
