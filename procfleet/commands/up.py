"""`procfleet up`: the whole stack on this machine (see procfleet/stack.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where embedded servers, spool and logs live "
                             "(default: $PROCFLEET_DATA_DIR or ./.procfleet)")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    parser.add_argument("--workers", type=int, default=1, help="digest worker processes")
    parser.add_argument("--no-agent", action="store_true",
                        help="do not run a local agent for this machine")
    parser.add_argument("--interval", type=float, default=15.0,
                        help="the local agent's collection interval in seconds")


def run(args: argparse.Namespace) -> int:
    from agent.errors import ProcfleetError
    from procfleet.stack import StackOptions, run_stack

    data_dir = args.data_dir or Path(os.environ.get("PROCFLEET_DATA_DIR", ".procfleet"))
    if args.workers < 1:
        print(f"procfleet up: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    options = StackOptions(
        data_dir=data_dir.resolve(),
        port=args.port,
        workers=args.workers,
        agent=not args.no_agent,
        agent_interval_s=args.interval,
        redis_url=os.environ.get("REDIS_URL") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
    )
    try:
        return run_stack(options)
    except ProcfleetError as exc:
        print(f"procfleet up: {exc}", file=sys.stderr)
        return 1
