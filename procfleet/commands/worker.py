"""`procfleet worker [--concurrency N] [--metrics-port P] [--burst] [--no-migrate]`: digest
workers. Settings come from the environment (digest_worker/settings.py lists them); the
options here override them."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="worker processes on this host (default 1)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="P",
                        help="serve /metrics on P (process i of N on P+i)")
    parser.add_argument("--burst", action="store_true",
                        help="drain the streams, then exit")
    parser.add_argument("--no-migrate", dest="migrate", action="store_false",
                        help="do not apply pending migrations at start")


def run(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from digest_worker.settings import WorkerSettings
    from digest_worker.supervisor import run_processes

    if args.concurrency < 1:
        print(f"procfleet worker: --concurrency must be >= 1, got {args.concurrency}",
              file=sys.stderr)
        return 2
    try:
        settings = WorkerSettings.from_env(
            os.environ, metrics_port=args.metrics_port, burst=args.burst or None)
    except ConfigError as exc:
        print(f"procfleet worker: {exc}", file=sys.stderr)
        return 2
    if args.migrate:
        code = _migrate(settings.database_url)
        if code:
            return code
    named = bool(os.environ.get("PROCFLEET_WORKER_CONSUMER"))
    if args.concurrency == 1:
        return _run_worker(settings)
    return run_processes(args.concurrency, _child, (settings, named, args.log_format,
                                                    args.log_level, os.getpid()),
                         restart=not args.burst)


def _migrate(database_url: str, wait_s: float = 30.0) -> int:
    """Apply pending migrations; wait up to ``wait_s`` for a database that is starting."""
    import asyncio
    import time

    import asyncpg

    from digest_worker.settings import mask_url
    from migrations.runner import MigrationError, migrate

    deadline = time.monotonic() + wait_s
    while True:
        try:
            asyncio.run(migrate(database_url))
            return 0
        except MigrationError as exc:
            print(f"procfleet worker: {exc}", file=sys.stderr)
            return 1
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if time.monotonic() > deadline:
                print(f"procfleet worker: cannot reach {mask_url(database_url)} to migrate: "
                      f"{exc}", file=sys.stderr)
                return 1
            time.sleep(1.0)
        except asyncpg.PostgresError as exc:
            print(f"procfleet worker: cannot migrate: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 1


def _run_worker(settings) -> int:
    import asyncio
    import signal

    from agent.errors import ProcfleetError
    from digest_worker.worker import Worker, tune_gc

    async def main() -> None:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop, sig.name.lower())
        await worker.run()

    tune_gc()
    try:
        asyncio.run(main())
    except ProcfleetError as exc:
        print(f"procfleet worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _child(index: int, settings, named: bool, log_format: str | None, log_level: str,
           supervisor_pid: int) -> None:
    """One of N worker processes (spawned): its own consumer name and metrics port. It stops
    (SIGTERM: finish the batch) when its supervisor dies, even of a kill -9."""
    from digest_worker.settings import default_consumer_name
    from procfleet.lifetime import follow_parent
    from procfleet.logs import setup_logging

    follow_parent(supervisor_pid)
    setup_logging(log_format, log_level)
    name = f"{settings.consumer_name}-{index}" if named else default_consumer_name()
    port = None if settings.metrics_port is None else settings.metrics_port + index
    sys.exit(_run_worker(settings.with_overrides(consumer_name=name, metrics_port=port)))
