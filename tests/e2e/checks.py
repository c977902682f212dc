"""What the e2e tests check after a run: rows per report in PostgreSQL, the streams' state,
what the programs logged (duplicates absorbed, the order the gateway took reports in) and the
agent's spool."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from agent.contract import Report
from agent.spool import spooled_files
from ingest_gateway import stream
from tests.e2e.harness import SHARDS, Program, Stack
from tests.support.polling import wait_until

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ROW_TABLES = ("process_samples", "process_group_samples", "snapshots")


async def landed_rows(database_url: str, server_ids: Iterable[str] | None = None,
                      ) -> dict[str, dict[tuple[str, int], int]]:
    """Rows per ``(server_id, ts in epoch microseconds)`` in each sample table."""
    conn = await asyncpg.connect(database_url)
    try:
        out: dict[str, dict[tuple[str, int], int]] = {}
        ids = None if server_ids is None else list(server_ids)
        for table in ROW_TABLES:
            rows = await conn.fetch(
                f"SELECT server_id, (extract(epoch FROM ts) * 1000000)::bigint AS ts_us, "
                f"count(*) AS n FROM {table} "
                f"WHERE $1::text[] IS NULL OR server_id = ANY($1::text[]) GROUP BY 1, 2", ids)
            out[table] = {(r["server_id"], r["ts_us"]): r["n"] for r in rows}
        return out
    finally:
        await conn.close()


def compare_rows(expected: dict[str, dict[tuple[str, int], int]],
                 actual: dict[str, dict[tuple[str, int], int]]) -> list[str]:
    """Human-readable differences (empty when every report's rows are there exactly once)."""
    problems = []
    for table, want in expected.items():
        got = actual.get(table, {})
        missing = [k for k in want if k not in got]
        wrong = [(k, want[k], got[k]) for k in want if k in got and got[k] != want[k]]
        extra = [k for k in got if k not in want]
        if missing or wrong or extra:
            problems.append(f"{table}: {len(want)} reports expected, {len(missing)} missing "
                            f"(e.g. {missing[:3]}), {len(wrong)} with wrong counts "
                            f"(key, expected, found: {wrong[:3]}), {len(extra)} unexpected "
                            f"(e.g. {extra[:3]})")
    return problems


async def stream_backlog(redis: Redis) -> dict[str, int]:
    """What the ``digest`` group has not finished (``lag``: never delivered, ``pending``:
    delivered, not acknowledged) and the entries dead-lettered, over the shards."""
    lag = pending = dead = 0
    for shard in range(SHARDS):
        key = stream.sample_stream(shard)
        dead += await redis.xlen(stream.dead_letter_stream(shard))
        if not await redis.exists(key):
            continue
        for group in await redis.xinfo_groups(key):
            if group["name"] in (stream.GROUP, stream.GROUP.encode()):
                pending += int(group["pending"])
                # lag is unknown (None) after some deletions: then whatever is left counts.
                lag += int(group["lag"]) if group.get("lag") is not None else (
                    await redis.xlen(key))
    return {"lag": lag, "pending": pending, "dead": dead}


async def pending_of(redis: Redis, consumer: str) -> int:
    """Entries delivered to ``consumer`` and not acknowledged yet (read, not settled)."""
    total = 0
    for shard in range(SHARDS):
        key = stream.sample_stream(shard)
        if not await redis.exists(key):
            continue
        summary = await redis.xpending(key, stream.GROUP)
        for entry in summary.get("consumers") or []:
            name = entry["name"].decode() if isinstance(entry["name"], bytes) else entry["name"]
            if name == consumer:
                total += int(entry["pending"])
    return total


async def wait_drained(stack: Stack, timeout_s: float = 60.0) -> None:
    """Every entry of the sample streams delivered and acknowledged."""
    redis = stack.redis()
    try:
        async def drained() -> bool:
            state = await stream_backlog(redis)
            return state["lag"] == 0 and state["pending"] == 0

        try:
            await wait_until(drained, "streams drained", timeout_s, interval_s=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.diagnosis()}") from None
    finally:
        await redis.aclose()


def worker_duplicates(stack: Stack) -> int:
    """Rows the workers found already present (``batch`` lines' ``duplicates``), all runs."""
    return sum(int(doc.get("duplicates", 0)) for p in stack.programs
               if p.name.startswith("worker") for doc in p.records()
               if doc.get("msg") == "batch")


def accepted_report_ids(gateway: Program, run: int) -> list[str]:
    """report_ids the gateway answered 2xx in run ``run``, in the order it answered them."""
    return [doc["report_id"] for doc in gateway.records(run)
            if doc.get("msg") == "request" and doc.get("path") == "/v1/reports"
            and 200 <= int(doc.get("status", 0)) < 300 and doc.get("report_id")]


@dataclass(frozen=True)
class SpooledReport:
    """One report file of an agent's spool, decoded."""

    name: str
    report: Report


def read_spool(spool_dir: Path) -> list[SpooledReport]:
    """The agent's spooled reports, oldest first."""
    out = []
    for path in spooled_files(spool_dir):
        try:
            body = gzip.decompress(path.read_bytes())
        except FileNotFoundError:  # replayed meanwhile
            continue
        out.append(SpooledReport(path.name, Report.model_validate_json(body)))
    return out


def report_key(report: Report) -> tuple[str, int]:
    """``(server_id, collected_at in epoch microseconds)``, as ``landed_rows`` keys rows."""
    return report.host.server_id, (report.collected_at - EPOCH) // timedelta(microseconds=1)
