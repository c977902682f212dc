"""Faults under a steady load, end to end: simulated agents (300-process reports, counters that
move, distinct server ids) post to the real gateway while one part of the pipeline is killed
or restarted; at the end every acknowledged report's rows are in PostgreSQL exactly once.

Only servers and programs the test started are killed, always by pid. Exactly once is checked
per report: ``(server_id, collected_at)`` holds as many process rows, group rows and snapshot
rows as the report had, and no row exists for any other key (the tables' unique keys make a
second copy impossible, so a count equal to the report's is "once").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from agent.spool import spooled_files
from bench.fleet_load import Fleet, FleetOptions, FleetStats, expected_rows
from tests.e2e.checks import (
    accepted_report_ids,
    compare_rows,
    landed_rows,
    pending_of,
    read_spool,
    report_key,
    stream_backlog,
    wait_drained,
    worker_duplicates,
)
from tests.e2e.conftest import Pipeline
from tests.support.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

# ~16 reports/s of 300 processes + 20 groups: ~5,000 rows/s, a steady load this shared
# 2-core box carries next to the test's own servers.
HOSTS = 8
INTERVAL_S = 0.5
LOAD_AFTER_FAULT_S = 3.0
FLEET_END_TIMEOUT_S = 90.0


async def rows_landed(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM process_samples")
    finally:
        await conn.close()


async def under_load(p: Pipeline, fault: Callable[[Fleet], Awaitable[None]],
                     hosts: int = HOSTS) -> FleetStats:
    """Run the fleet, let rows land, apply ``fault``, keep the load on for a while, stop the
    fleet (deliveries in progress finish), drain, and demand every report exactly once."""
    stack = p.stack
    fleet = Fleet(FleetOptions(
        gateway_url=stack.gateway_url, token=stack.ingest_token, hosts=hosts,
        interval_s=INTERVAL_S, duration_s=120, give_up_after_s=60, compress_level=1,
        request_timeout_s=10, server_id_prefix=f"sim-{uuid.uuid4().hex[:6]}"))
    running = asyncio.create_task(fleet.run())
    try:
        await wait_until(lambda: rows_landed(stack.database_url), "first rows landed", 30)
        await fault(fleet)
        await asyncio.sleep(LOAD_AFTER_FAULT_S)
    finally:
        fleet.stop()
        stats = await asyncio.wait_for(running, FLEET_END_TIMEOUT_S)
    summary = stats.summary()
    assert summary["given_up"] == 0, summary
    assert summary["acked"] == summary["reports"] > 2 * hosts, summary
    await wait_drained(stack)
    problems = compare_rows(expected_rows(stats.reports),
                            await landed_rows(stack.database_url,
                                              [h.server_id for h in fleet.hosts]))
    assert not problems, "\n".join(problems) + f"\n{summary}\n{stack.diagnosis()}"
    redis = stack.redis()
    try:
        assert (await stream_backlog(redis))["dead"] == 0
    finally:
        await redis.aclose()
    return stats


async def test_worker_killed_mid_batch_is_restarted_and_nothing_is_lost(pipeline):
    stack = pipeline.stack
    await stack.start_gateway()
    victim = stack.start_worker("e2e-w1")
    stack.start_worker("e2e-w2")
    redis = stack.redis()
    held: list[int] = []

    async def kill_mid_batch(fleet: Fleet) -> None:
        # Entries delivered to e2e-w1 and not acknowledged: it is inside a batch.
        held.append(await wait_until(lambda: pending_of(redis, "e2e-w1"),
                                     "e2e-w1 holding a batch", 30, interval_s=0.002))
        victim.kill()
        held.append(await pending_of(redis, "e2e-w1"))
        await asyncio.sleep(1.0)
        # Same consumer name: it re-reads its own pending entries first (XREADGROUP id 0).
        await stack.restart(victim)

    try:
        await under_load(pipeline, kill_mid_batch)
        assert held[0] > 0 and held[1] > 0, held
        assert await pending_of(redis, "e2e-w1") == 0
    finally:
        await redis.aclose()
    assert victim.runs == 2


async def test_postgresql_restart_under_load(pipeline):
    stack = pipeline.stack
    await stack.start_gateway()
    stack.start_worker("e2e-w1")
    stack.start_worker("e2e-w2")
    outage: dict[str, float] = {}

    async def restart_postgresql(fleet: Fleet) -> None:
        outage["from"] = time.time()
        await asyncio.to_thread(pipeline.postgres.stop)
        await asyncio.sleep(3.0)  # the workers retry; the gateway keeps accepting
        outage["to"] = time.time()
        await asyncio.to_thread(pipeline.postgres.start)

    stats = await under_load(pipeline, restart_postgresql)
    # Ingest does not need PostgreSQL: reports were acknowledged during the outage.
    assert any(outage["from"] < r.acked_s < outage["to"] for r in stats.reports)


async def test_redis_killed_and_restarted_loses_no_acknowledged_report(pipeline):
    # kill -9 of Valkey with appendfsync everysec may lose up to ~1 s of writes that were
    # already acknowledged, if the OS goes down with it (or, on a slow disk, if Redis had
    # postponed its write()). With PROCFLEET_WAIT_AOF the gateway answers 2xx only once the
    # AOF is fsynced (WAITAOF, Valkey >= 8 / Redis >= 7.2), so the promise holds on kill -9.
    stack = pipeline.stack
    gateway = await stack.start_gateway(PROCFLEET_WAIT_AOF="true")
    assert any(d.get("wait_aof_active") is True for d in gateway.records())
    stack.start_worker("e2e-w1")
    stack.start_worker("e2e-w2")

    async def kill_redis(fleet: Fleet) -> None:
        await asyncio.to_thread(pipeline.valkey.kill)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pipeline.valkey.start)  # same port, same AOF

    stats = await under_load(pipeline, kill_redis)
    # While Redis was down the gateway said 503 (+ Retry-After) and the agents retried.
    assert stats.statuses[503] > 0


async def test_gateway_killed_mid_request_duplicates_are_absorbed(pipeline):
    # With WAITAOF a request holds its answer until the AOF is fsynced, *after* its messages
    # are in the stream. To kill the gateway exactly there, fsyncs are made to stall as on a
    # slow disk (``appendfsync no``: WAITAOF then waits for its full timeout): requests older
    # than a few hundred ms are enqueued and unanswered. The agents' retries enqueue them again
    # (the dedupe key is written only once the answer is certain); the keys absorb the copy.
    stack = pipeline.stack
    gateway = await stack.start_gateway(PROCFLEET_WAIT_AOF="true")
    stack.start_worker("e2e-w1")
    stack.start_worker("e2e-w2")
    redis = stack.redis()

    async def kill_gateway(fleet: Fleet) -> None:
        async def stuck_after_enqueue() -> bool:
            now = time.monotonic()
            return sum(now - since > 0.3 for since in list(fleet.in_flight.values())) >= 2

        await redis.config_set("appendfsync", "no")
        try:
            await wait_until(stuck_after_enqueue, "requests waiting for the AOF", 20,
                             interval_s=0.01)
            gateway.kill()
        finally:
            await redis.config_set("appendfsync", "everysec")
        await asyncio.sleep(1.0)
        await stack.restart(gateway)

    try:
        stats = await under_load(pipeline, kill_gateway)
    finally:
        await redis.aclose()
    assert stats.summary()["mid_request_errors"] >= 2
    assert worker_duplicates(stack) > 0


async def test_gateway_down_real_agent_spools_then_replays_oldest_first(pipeline, tmp_path):
    stack = pipeline.stack
    gateway = await stack.start_gateway()
    stack.start_worker("e2e-w1")
    stack.start_worker("e2e-w2")
    server_id = f"e2e-agent-{uuid.uuid4().hex[:6]}"
    spool_dir = tmp_path / "spool"
    agent = stack.start_agent(server_id, spool_dir, interval_s=1.0)
    spooled = []

    async def stop_gateway_for_a_while(fleet: Fleet) -> None:
        async def agent_landed() -> bool:
            return bool((await landed_rows(stack.database_url, [server_id]))["process_samples"])

        await wait_until(agent_landed, "the agent's first report landed", 30)
        assert gateway.stop() == 0  # SIGTERM: requests in flight finish first
        async def spool_holds(reports: int) -> bool:
            return len(spooled_files(spool_dir)) >= reports

        async def spool_empty() -> bool:
            return not await spool_holds(1)

        await wait_until(lambda: spool_holds(4), "4 reports in the agent's spool", 30,
                         interval_s=0.2)
        spooled.extend(read_spool(spool_dir))
        await stack.restart(gateway)
        await wait_until(spool_empty, "the agent's spool replayed", 30, interval_s=0.2)

    await under_load(pipeline, stop_gateway_for_a_while)
    assert agent.stop() == 0

    # Replayed oldest-first: the restarted gateway took the spooled reports in spool order.
    spooled_ids = [s.report.report_id for s in spooled]
    accepted = [rid for rid in accepted_report_ids(gateway, run=1) if rid in set(spooled_ids)]
    assert accepted == spooled_ids
    # ... and completely: every spooled report's rows are there, exactly.
    expected = {"process_samples": {report_key(s.report): len(s.report.processes)
                                    for s in spooled},
                "snapshots": {report_key(s.report): len(s.report.snapshots) for s in spooled}}
    landed = await landed_rows(stack.database_url, [server_id])
    for table, want in expected.items():
        assert {k: landed[table].get(k) for k in want} == want, table
    # The agent's own account: nothing dropped or rejected, everything spooled was replayed.
    stopped = [d for d in agent.records() if d.get("msg") == "agent stopped"][-1]
    assert stopped["dropped"] == stopped["rejected"] == 0
    assert stopped["replayed"] >= len(spooled) and stopped["spool_reports"] == 0
