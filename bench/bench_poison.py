"""Poison isolation: the cost of one batch in which half the messages cannot be inserted.

    python bench/bench_poison.py [--rows 200 400 800] [--baseline-writer FILE]

Each batch: ``rows`` messages shaped like real reports (bench_writer.make_messages), every
other one replaced by a process message whose command holds a NUL (PostgreSQL refuses it:
the gateway now refuses such reports, so this stands for any value the database rejects).
``BatchWriter.commit`` on a fresh database per size; printed: wall time, the SQL statements
sent (counted with asyncpg's query logger, COPY included), messages dead-lettered and rows
landed. ``--baseline-writer`` loads another ``writer.py`` (e.g. the one of an older commit,
``git show e8ce413:digest_worker/writer.py > .procfleet/old_writer.py``, gitignored) and runs
it on the same batches in the same run, alternating, for a side-by-side figure.

Uses the PostgreSQL server of ``DATABASE_URL`` (default: the local one, user postgres); it
creates and drops its own database.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.bench_writer import create_database, make_messages  # noqa: E402
from digest_worker import writer as current_writer  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def poisoned(count: int, now_s: float) -> list[tuple[str, tuple]]:
    """``count`` messages, every odd one a process whose command PostgreSQL refuses."""
    messages = make_messages(count, now_s)
    for index in range(1, count, 2):
        sid, ts = messages[index][1][0], messages[index][1][1]
        messages[index] = ("p", (sid, ts, 90_000 + index, None, 1, "root", "bad",
                                 "evil\x00arg", "S", 1.0, 0.0, 0.0, 1, 1, None, None, None))
    return messages


def load_writer(path: str):
    spec = importlib.util.spec_from_file_location("baseline_writer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def run_once(url: str, module, messages, timeout_s: float) -> dict:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE servers, snapshots, process_points, process_identities, "
                           "process_group_points, process_groups")
        writer = module.BatchWriter("copy")
        await writer.prepare(conn)
        statements = 0

        def count(_record) -> None:
            nonlocal statements
            statements += 1

        conn.add_query_logger(count)
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(writer.commit(conn, messages), timeout_s)
        except TimeoutError:
            return {"seconds": None, "statements": statements}
        elapsed = time.perf_counter() - started
        conn.remove_query_logger(count)
        return {"seconds": elapsed, "statements": statements, "dead": len(result.poison),
                "landed": result.inserted_total}
    finally:
        conn.terminate()


async def main(args: argparse.Namespace, admin_url: str) -> None:
    writers = [("this tree", current_writer)]
    if args.baseline_writer:
        writers.insert(0, ("baseline", load_writer(args.baseline_writer)))
    now_s = time.time()
    url = await create_database(admin_url)
    print(f"{'writer':<10} {'rows':>5} {'seconds':>8} {'statements':>10} {'dead':>5} "
          f"{'landed':>6}")
    try:
        for rows in args.rows:
            messages = poisoned(rows, now_s)
            for name, module in writers:
                out = await run_once(url, module, messages, args.timeout_s)
                seconds = "timeout" if out["seconds"] is None else f"{out['seconds']:.2f}"
                print(f"{name:<10} {rows:>5} {seconds:>8} {out['statements']:>10} "
                      f"{out.get('dead', '-'):>5} {out.get('landed', '-'):>6}", flush=True)
    finally:
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}"')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200, 400, 800])
    parser.add_argument("--baseline-writer", help="path of another writer.py to compare")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments, os.environ.get("DATABASE_URL", DEFAULT_URL)))
