"""`procfleet compact [--older-than 2h] [--database-url URL]`: run the storage upkeep once,
synchronously — compact every hour that ended at or before now minus the given age, give
the emptied hot partitions' disk back, then apply the retention of every tier (the
PROCFLEET_*RETENTION_DAYS settings: partitions dropped by tier, identities without history
expired) — and exit 0. The workers run the same job every PROCFLEET_COMPACT_INTERVAL_S (the
retention part hourly); running both at once is safe (one lock per hour, per upkeep)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_age(text: str) -> timedelta:
    """``90m``, ``2h``, ``1.5h``, ``1d``, ``0s`` → a timedelta (argparse type)."""
    match = _AGE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid age {text!r}: a number and a unit s, m, h or d (e.g. 2h, 90m)")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", type=parse_age, default=None, metavar="AGE",
                        help="compact hours that ended at least AGE ago (default: "
                             "$PROCFLEET_HOT_WINDOW_H hours, else 2h)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (default: $DATABASE_URL)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from agent.errors import ProcfleetError
    from digest_worker.compaction import run_storage_upkeep
    from digest_worker.retention import Retention
    from digest_worker.settings import WorkerSettings, mask_url

    try:
        settings = WorkerSettings.from_env(os.environ, database_url=args.database_url)
    except ProcfleetError as exc:
        print(f"procfleet compact: {exc}", file=sys.stderr)
        return 2
    older_than = (args.older_than if args.older_than is not None
                  else timedelta(hours=settings.hot_window_h))

    async def once():
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await run_storage_upkeep(
                conn, older_than=older_than, retention=Retention.from_settings(settings),
                ahead_days=settings.partitions_ahead_days)
        finally:
            await conn.close()

    try:
        report = asyncio.run(once())
    except (OSError, asyncpg.CannotConnectNowError) as exc:
        print(f"procfleet compact: cannot reach {mask_url(settings.database_url)}: {exc}",
              file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, ProcfleetError) as exc:
        print(f"procfleet compact: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    kv = report.as_kv()
    print(" ".join(f"{key}={value}" for key, value in kv.items()))
    return 0
