"""`procfleet agent [--config FILE] [--once] [--dry-run] [--check]`: run the host agent.

The only place the agent's environment is read (``PROCFLEET_<KEY>`` overrides); everything
below gets an ``AgentSettings``. The agent package is imported inside ``run`` so that building
the ``procfleet`` parser stays cheap.

Exit codes: 0 ok; 1 invalid configuration (or, with --once, a report rejected or lost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("PROCFLEET_AGENT_CONFIG") or None,
        help="TOML settings file (default: $PROCFLEET_AGENT_CONFIG; environment "
        "PROCFLEET_<KEY> overrides any key)",
    )
    parser.add_argument("--once", action="store_true", help="run one tick (no splay) and exit")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="collect one report, print its JSON on stdout, send nothing",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the settings and the spool directory, then exit 0 (ok) or 1",
    )


def run(args: argparse.Namespace) -> int:
    from agent.config import load_settings
    from agent.errors import ProcfleetError
    from procfleet.agent_process import check_settings, dry_run, run_agent

    try:
        settings = load_settings(args.config, os.environ)
        host = check_settings(settings) if args.check else None
    except ProcfleetError as exc:
        print(f"procfleet agent: {exc}", file=sys.stderr)
        return 1
    if host is not None:
        print("agent settings ok")
        for key, value in {**settings.describe(), "server_id": host.server_id}.items():
            print(f"  {key} = {value}")
        return 0
    if args.dry_run:
        report = asyncio.run(dry_run(settings))
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return 0
    try:
        stats = asyncio.run(run_agent(settings, once=args.once))
    except ProcfleetError as exc:
        print(f"procfleet agent: {exc}", file=sys.stderr)
        return 1
    if args.once and (stats.rejected or stats.dropped or stats.failed_ticks):
        return 1
    return 0
