"""`procfleet migrate [--database-url URL]`: apply the pending migrations (migrations/*.sql)
to $DATABASE_URL. Safe to run from several places at once; refuses to run when an applied
migration file was edited."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (default: $DATABASE_URL)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from digest_worker.settings import DEFAULT_DATABASE_URL, mask_url
    from migrations.runner import MigrationError, discover, migrate

    url = args.database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        applied = asyncio.run(migrate(url))
    except MigrationError as exc:
        print(f"procfleet migrate: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.CannotConnectNowError) as exc:
        print(f"procfleet migrate: cannot reach {mask_url(url)}: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        print(f"procfleet migrate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for migration in applied:
        print(f"applied {migration.path.name}")
    known = discover()
    latest = known[-1].version if known else 0
    print(f"database at version {latest:04d} ({len(applied)} migration(s) applied now)")
    return 0
