"""`procfleet gateway`: the HTTP service (ingest, the query API and the dashboard).

Settings come from the environment (``ingest_gateway.settings.GatewaySettings``); the listen
address from the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")


def run(args: argparse.Namespace) -> int:
    from agent.errors import ProcfleetError
    from ingest_gateway.server import serve, tune_gc
    from ingest_gateway.settings import GatewaySettings

    try:
        settings = GatewaySettings.from_env(os.environ)
        tune_gc()
        asyncio.run(serve(settings, args.host, args.port))
    except (ProcfleetError, OSError) as exc:
        print(f"procfleet gateway: {exc}", file=sys.stderr)
        return 2
    return 0
