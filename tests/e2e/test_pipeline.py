"""End to end: the real agent on this machine → gateway → Redis → worker → PostgreSQL → the
query API, every part a real program in its own process."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.polling import wait_until

pytestmark = pytest.mark.integration


def comm_of(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


async def test_this_machines_processes_show_in_the_api(pipeline, tmp_path):
    stack = pipeline.stack
    gateway = await stack.start_gateway()
    worker = stack.start_worker("e2e-w1")
    server_id = f"e2e-{uuid.uuid4().hex[:8]}"
    agent = stack.start_agent(server_id, tmp_path / "spool", interval_s=1.0)

    headers = {"Authorization": f"Bearer {stack.read_token}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, headers=headers,
                                 timeout=10) as client:
        async def snapshot_with_rates() -> dict | None:
            response = await client.get(f"/api/servers/{server_id}/processes",
                                        params={"sort": "pid", "limit": 5000})
            if response.status_code != 200:
                return None
            doc = response.json()
            # Two collections of the same processes give CPU rates.
            return doc if any(p["cpu_percent"] is not None for p in doc["processes"]) else None

        snapshot = await wait_until(snapshot_with_rates,
                                    "the agent's processes, with CPU rates, in the API", 60,
                                    interval_s=0.5)
        async def top_with_cpu() -> dict | None:
            # ps counts CPU time in whole seconds: wait until some process on this machine
            # used one between two reports.
            doc = (await client.get("/api/processes/top", params={
                "metric": "cpu", "hours": 1, "server_ids": server_id, "source": "processes",
                "limit": 50})).json()
            return doc if doc["processes"][0]["avg_cpu_percent"] > 0 else None

        top = await wait_until(top_with_cpu, "a process using CPU in the top list", 60,
                               interval_s=0.5)
        memory = (await client.get("/api/processes/top", params={
            "metric": "memory", "hours": 1, "server_ids": server_id, "source": "processes",
            "limit": 50})).json()
        servers = (await client.get("/api/servers")).json()["servers"]

    by_pid = {p["pid"]: p for p in snapshot["processes"]}
    # This test's process and the agent itself were running when the agent ran ps.
    for pid in (os.getpid(), agent.pid, gateway.pid, worker.pid):
        assert pid in by_pid, f"pid {pid} ({comm_of(pid)}) missing from {sorted(by_pid)[:20]}"
        assert by_pid[pid]["name"] == comm_of(pid)
    assert snapshot["total"] == len(snapshot["processes"]) > 5

    assert top["source"] == "processes"
    cpu = [p["avg_cpu_percent"] for p in top["processes"]]
    assert cpu == sorted(cpu, reverse=True)
    assert all(p["servers"] == 1 and p["avg_cpu_percent"] >= 0 for p in top["processes"])
    assert memory["processes"][0]["avg_memory_mb"] > 0
    assert [s for s in servers if s["server_id"] == server_id][0]["hostname"] == (
        socket.gethostname())

    # Every report of the agent landed whole: as many rows as its ps snapshot had processes.
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch(
            "SELECT s.ts, s.process_count, (SELECT count(*) FROM process_samples p "
            "WHERE p.server_id = s.server_id AND p.ts = s.ts) AS landed "
            "FROM snapshots s WHERE s.server_id = $1 AND s.source = 'ps'", server_id)
    finally:
        await conn.close()
    assert len(rows) >= 2
    assert [(r["ts"], r["landed"]) for r in rows] == [(r["ts"], r["process_count"])
                                                       for r in rows]

    # Each program stops cleanly on SIGTERM.
    assert agent.stop() == 0
    assert gateway.stop() == 0
    assert worker.stop() == 0
    assert any(d.get("msg") == "agent stopped" for d in agent.records())
