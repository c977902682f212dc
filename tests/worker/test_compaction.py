"""Storage upkeep: closed hours compacted into history rows, lossless, idempotent, safe to run
from several connections and to interrupt."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from digest_worker.compaction import run_storage_upkeep
from digest_worker.partitions import run_upkeep
from digest_worker.writer import BatchWriter
from migrations.runner import migrate
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
START = (NOW - timedelta(hours=5)).replace(minute=0)  # hours START .. START+3 are closed
SERVERS = ("9f2c1d7e4b8a4c55a1e0d3b6c7f81234", "b1", "windows-host")
ALL = ("SELECT server_id, ts, pid, start_time, ppid, username, name, command, state, "
       "cpu_seconds_total::text, cpu_percent, memory_percent, rss_bytes, vsz_bytes, tty, "
       "session_name, session_id FROM process_samples ORDER BY server_id, pid, start_time, ts")


def fleet_messages(start: datetime, minutes: int, jitter_us: int = 1) -> list[tuple]:
    """Samples every 15 s with jitter, tick CPU and odd values: a NaN-free float counter
    that is not in ticks, NULL sizes, NULL percents, a short-lived process and a pid
    reused with a new start time."""
    out = []
    t0 = start.timestamp()
    for i in range(minutes * 4):
        for s, server in enumerate(SERVERS):
            ts = t0 + i * 15 + (i * 7919 % 997) * jitter_us / 1e6 + s * 0.001
            out.append(("p", (server, ts, 100, t0 - 86400, 1, "root", "nginx",
                              "nginx: master process /usr/sbin/nginx -g daemon on;",
                              "S" if i % 5 else "R", 1234.56 + i * 0.01 * (i % 3), 0.1, 0.5,
                              40960 + 4096 * (i % 4), 2**35 + i, None, None, None)))
            out.append(("p", (server, ts, 200, None if s == 2 else t0 - 3600, None, "app",
                              "python3", "python3 -m worker", "S",
                              0.1 * i + 1e-9 if s == 1 else 3.0, None, None,
                              None if i % 2 else 1 << 20, None, "pts/1", "Console", 1)))
            if 10 <= i < 14:  # a short-lived process
                out.append(("p", (server, ts, 300 + s, t0 + 140, 100, "root", "sh",
                                  "/bin/sh -c healthcheck", "R", 0.01 * (i - 9), 1.0, 0.0,
                                  8192, 16384, None, None, None)))
            if i == 50:  # pid 100 reused later by another process
                out.append(("p", (server, ts, 100, ts - 3, 1, "root", "nginx-new", "x", "S",
                                  0.0, 0.0, 0.0, 1, 1, None, None, None)))
    return out


GROUPS_ALL = ("SELECT server_id, ts, name, num_procs, cpu_user_seconds_total::text, "
              "cpu_system_seconds_total::text, memory_resident_bytes, memory_virtual_bytes, "
              "memory_swapped_bytes, num_threads, open_fds, read_bytes_total, "
              "write_bytes_total, major_page_faults_total, minor_page_faults_total, "
              "context_switches_voluntary_total, context_switches_nonvoluntary_total, "
              "oldest_start_time FROM process_group_samples ORDER BY server_id, name, ts")


def group_messages(start: datetime, minutes: int) -> list[tuple]:
    """Group scrapes: tick counters, a counter off the tick grid, NULL columns, a counter
    reset, an int column going down."""
    out = []
    t0 = start.timestamp()
    for i in range(minutes * 4):
        ts = t0 + i * 15 + (i * 31 % 17) / 1000
        for server in SERVERS[:2]:
            out.append(("g", (server, ts, "nginx", 1 + i % 3, 10.0 + 0.01 * i,
                              (2.5 + 0.02 * i) if i != 30 else 0.01, 2**31 + 4096 * (i % 5),
                              None if i % 7 == 0 else 2**40, 0, 4 + i % 2, 12 - i % 3,
                              10**12 + 512 * i, 10**9 + i * i, 3, 10**6 + i, 7 * i, i,
                              t0 - 86400)))
            out.append(("g", (server, ts, "postgres", 5, 1e-7 * i + 123.456789, 1.0,
                              10**9, None, None, None, None, None, None, None, None, None,
                              None, None)))
    return out


@pytest.fixture
async def conn(migrated_database):
    connection = await asyncpg.connect(migrated_database)
    await run_upkeep(connection, NOW.date(), 7, 1)
    yield connection
    await connection.close()


async def write(conn: asyncpg.Connection, messages: list[tuple]) -> None:
    writer = BatchWriter("staging")
    await writer.prepare(conn)
    for i in range(0, len(messages), 500):
        await writer.commit(conn, messages[i:i + 500])


async def test_compacted_hours_give_back_every_sample_exactly(conn):
    await write(conn, fleet_messages(START, 4 * 60))
    before = [tuple(r) for r in await conn.fetch(ALL)]

    report = await run_storage_upkeep(conn, now=NOW)

    assert len(report.hours) == 3 and report.samples == len(before) - (
        await conn.fetchval("SELECT count(*) FROM process_points"))
    assert await conn.fetchval("SELECT min(ts) FROM process_points") >= START + timedelta(
        hours=3)
    assert await conn.fetchval("SELECT count(*) FROM process_history") > 0
    after = [tuple(r) for r in await conn.fetch(ALL)]
    assert after == before
    again = await run_storage_upkeep(conn, now=NOW)
    assert again.hours == [] and [tuple(r) for r in await conn.fetch(ALL)] == before


async def test_late_and_redelivered_samples_of_a_compacted_hour_land_exactly_once(conn):
    messages = fleet_messages(START, 3 * 60)
    await write(conn, messages)
    await run_storage_upkeep(conn, now=NOW)
    late_ts = (START + timedelta(minutes=7, seconds=3)).timestamp()
    late = ("p", (SERVERS[0], late_ts, 777, late_ts - 60, 1, "root", "late", "late --x", "S",
                  0.5, None, None, 4096, 8192, None, None, None))
    redelivered = messages[40:60]
    await write(conn, [late, *redelivered])
    expected = len(messages) + 1
    # while hot: the view reads both and the compacted copy of a redelivered sample hides
    assert await conn.fetchval("SELECT count(*) FROM process_samples") == expected
    before = [tuple(r) for r in await conn.fetch(ALL)]

    report = await run_storage_upkeep(conn, now=NOW)

    assert report.samples == 21 and report.merged_samples > 0
    assert await conn.fetchval("SELECT count(*) FROM process_points") == 0
    assert [tuple(r) for r in await conn.fetch(ALL)] == before
    assert await conn.fetchval("SELECT count(*) FROM process_samples WHERE pid = 777") == 1


async def test_two_upkeeps_at_once_compact_each_hour_once(conn, migrated_database):
    await write(conn, fleet_messages(START, 4 * 60))
    before = [tuple(r) for r in await conn.fetch(ALL)]
    others = [await asyncpg.connect(migrated_database) for _ in range(2)]
    try:
        reports = await asyncio.gather(*(run_storage_upkeep(c, now=NOW) for c in others))
    finally:
        for other in others:
            await other.close()
    done = sorted(h for r in reports for h in r.hours)
    assert len(done) == len(set(done))
    leftover = await run_storage_upkeep(conn, now=NOW)
    assert sorted(done + leftover.hours) == [START + timedelta(hours=h) for h in range(3)]
    assert [tuple(r) for r in await conn.fetch(ALL)] == before


async def test_a_compaction_killed_midway_loses_and_duplicates_nothing(conn,
                                                                      migrated_database):
    await write(conn, fleet_messages(START, 2 * 60))
    before = [tuple(r) for r in await conn.fetch(ALL)]
    blocker, victim = (await asyncpg.connect(migrated_database),
                       await asyncpg.connect(migrated_database))
    try:
        # The victim takes the hot rows out, then waits on the clock table: kill it there.
        await blocker.execute("BEGIN; LOCK TABLE history_clock IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(run_storage_upkeep(victim, now=NOW))
        pid = victim.get_server_pid()
        for _ in range(400):
            waiting = await conn.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await task
        await blocker.execute("ROLLBACK")
    finally:
        await blocker.close()
        victim.terminate()
    assert [tuple(r) for r in await conn.fetch(ALL)] == before

    report = await run_storage_upkeep(conn, now=NOW)

    assert len(report.hours) == 2
    assert [tuple(r) for r in await conn.fetch(ALL)] == before


async def test_procfleet_compact_runs_the_upkeep_once_and_exits_0(conn, migrated_database):
    await write(conn, fleet_messages(START, 4 * 60))
    before = [tuple(r) for r in await conn.fetch(ALL)]
    command = [sys.executable, "-m", "procfleet", "compact", "--older-than", "2h",
               "--database-url", migrated_database]

    done = await asyncio.to_thread(subprocess.run, command, cwd=REPO, capture_output=True,
                                   text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "hours=3 " in done.stdout
    assert await conn.fetchval("SELECT min(ts) FROM process_points") >= START + timedelta(
        hours=3)
    assert [tuple(r) for r in await conn.fetch(ALL)] == before


def test_procfleet_compact_refuses_a_bad_age_and_changes_nothing():
    done = subprocess.run([sys.executable, "-m", "procfleet", "compact", "--older-than", "2x"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid age '2x'" in done.stderr


async def test_compacted_group_hours_give_back_every_scrape_exactly(conn):
    messages = group_messages(START, 4 * 60)
    await write(conn, messages)
    before = [tuple(r) for r in await conn.fetch(GROUPS_ALL)]
    assert len(before) == len(messages)

    report = await run_storage_upkeep(conn, now=NOW)

    assert len(report.group_hours) == 3
    assert await conn.fetchval("SELECT count(*) FROM process_group_history") == 12  # 2x2x3
    assert await conn.fetchval("SELECT min(ts) FROM process_group_points") >= (
        START + timedelta(hours=3))
    assert [tuple(r) for r in await conn.fetch(GROUPS_ALL)] == before
    # a redelivered scrape of a compacted hour lands once
    await write(conn, messages[100:110])
    assert [tuple(r) for r in await conn.fetch(GROUPS_ALL)] == before
    await run_storage_upkeep(conn, now=NOW)
    assert await conn.fetchval("SELECT count(*) FROM process_group_points WHERE ts < $1",
                               START + timedelta(hours=3)) == 0
    assert [tuple(r) for r in await conn.fetch(GROUPS_ALL)] == before


async def test_procfleet_compact_killed_with_sigkill_midway_loses_nothing(conn,
                                                                        migrated_database):
    await write(conn, fleet_messages(START, 2 * 60))
    before = [tuple(r) for r in await conn.fetch(ALL)]
    blocker = await asyncpg.connect(migrated_database)
    try:
        await blocker.execute("BEGIN; LOCK TABLE history_clock IN ACCESS EXCLUSIVE MODE")
        child = subprocess.Popen(
            [sys.executable, "-m", "procfleet", "compact", "--older-than", "0s",
             "--database-url", migrated_database], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        try:
            waiting = False
            for _ in range(600):  # the child has taken the hour's hot rows out and waits
                waiting = await conn.fetchval(
                    "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, child.communicate(timeout=5)[0] if child.poll() is not None else ""
            child.kill()  # SIGKILL: no cleanup in the client
            assert child.wait(timeout=30) == -9
        finally:
            if child.poll() is None:
                child.kill()
        await blocker.execute("ROLLBACK")
    finally:
        await blocker.close()
    # The server aborts the dead client's transaction: poll until its backend is gone.
    for _ in range(600):
        if not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state <> 'idle'"):
            break
        await asyncio.sleep(0.05)
    assert [tuple(r) for r in await conn.fetch(ALL)] == before

    report = await run_storage_upkeep(conn, now=NOW)

    assert len(report.hours) == 2
    assert [tuple(r) for r in await conn.fetch(ALL)] == before


async def _connect_when_accepting(url: str) -> asyncpg.Connection:
    async def attempt() -> asyncpg.Connection | None:
        try:
            return await asyncpg.connect(url)
        except (asyncpg.CannotConnectNowError, OSError):
            return None
    return await wait_until(attempt, "PostgreSQL accepting connections", timeout_s=60)


async def _waiting_on_a_lock(conn: asyncpg.Connection, pid: int) -> bool:
    return bool(await conn.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))


def _restart(server, mode: str) -> None:
    """Restart the test's own PostgreSQL: ``fast`` (SIGINT: transactions aborted, a
    checkpoint) or ``immediate`` (SIGQUIT: no checkpoint, crash recovery from the WAL)."""
    if mode == "fast":
        server.stop()
    else:
        server.proc.send_signal(signal.SIGQUIT)
        server.proc.wait(60)
        server.proc = None
    server.start()


@pytest.mark.fault
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_postgres_restart_mid_compaction_loses_and_duplicates_nothing(own_postgres,
                                                                             mode):
    server = own_postgres()
    await migrate(server.url)
    conn = await _connect_when_accepting(server.url)
    await run_upkeep(conn, NOW.date(), 7, 1)
    await write(conn, fleet_messages(START, 2 * 60))
    await write(conn, group_messages(START, 2 * 60))
    before = [tuple(r) for r in await conn.fetch(ALL)]
    groups_before = [tuple(r) for r in await conn.fetch(GROUPS_ALL)]
    hot = await conn.fetchval("SELECT count(*) FROM process_points")
    blocker, victim = (await asyncpg.connect(server.url), await asyncpg.connect(server.url))
    await conn.close()
    try:
        # The victim's transaction takes the first hour's hot rows out, then waits on the
        # clock table (the test holds it): restart PostgreSQL there, the transaction open.
        await blocker.execute("BEGIN; LOCK TABLE history_clock IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(run_storage_upkeep(victim, now=NOW))
        pid = victim.get_server_pid()
        await wait_until(lambda: _waiting_on_a_lock(blocker, pid),
                         "the compaction waiting on the clock table")
        await asyncio.to_thread(_restart, server, mode)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await task
    finally:
        blocker.terminate()
        victim.terminate()
    conn = await _connect_when_accepting(server.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM process_points") == hot
        assert await conn.fetchval("SELECT count(*) FROM process_history") == 0
        assert [tuple(r) for r in await conn.fetch(ALL)] == before

        report = await run_storage_upkeep(conn, now=NOW)

        assert len(report.hours) == 2 and len(report.group_hours) == 2
        assert report.samples == len(before) + len(groups_before) and report.merged_samples == 0
        assert await conn.fetchval("SELECT count(*) FROM process_points") == 0
        assert await conn.fetchval("SELECT count(*) FROM process_group_points") == 0
        assert [tuple(r) for r in await conn.fetch(ALL)] == before
        assert [tuple(r) for r in await conn.fetch(GROUPS_ALL)] == groups_before
    finally:
        await conn.close()
