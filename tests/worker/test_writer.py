"""BatchWriter against a real database: methods, fallback, poison isolation, servers."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import asyncpg
import pytest

from digest_worker.writer import FALLBACK_BATCHES, BatchWriter, is_poison
from tests.support.polling import wait_until
from tests.support.worker import forge_keys, report_messages

pytestmark = pytest.mark.integration

TS = 1_790_000_000.0


@pytest.fixture
async def conn(migrated_database):
    connection = await asyncpg.connect(migrated_database)
    yield connection
    await connection.close()


async def prepared(conn, method: str) -> BatchWriter:
    writer = BatchWriter(method)
    await writer.prepare(conn)
    return writer


async def test_copy_falls_back_to_on_conflict_when_rows_exist_then_stays_there(conn):
    writer = await prepared(conn, "copy")
    messages = report_messages("srv", TS, processes=30)
    first = await writer.commit(conn, messages)
    again = await writer.commit(conn, messages)

    assert not first.fell_back and first.inserted["process_samples"] == 30
    assert again.fell_back and again.inserted_total == 1  # the host message
    assert again.duplicates == {"process_samples": 30, "process_group_samples": 2,
                                "snapshots": 1}
    upcoming = [writer._method_for_next_batch() for _ in range(FALLBACK_BATCHES + 1)]
    assert upcoming == ["staging"] * FALLBACK_BATCHES + ["copy"]


@pytest.mark.parametrize("method", ["copy", "staging", "unnest"])
async def test_every_method_writes_the_same_rows(conn, method):
    writer = await prepared(conn, method)
    messages = report_messages("srv", TS, processes=25)

    result = await writer.commit(conn, messages)

    assert result.inserted_total == len(messages) and result.poison == []
    rows = await conn.fetch("SELECT * FROM process_samples ORDER BY pid")
    assert [r["pid"] for r in rows] == list(range(100, 125))
    assert rows[3]["start_time"] == datetime.fromtimestamp(TS - 86400 + 3, UTC)
    assert rows[3]["cpu_seconds_total"] == 4.5 and rows[3]["username"] == "root"


async def test_bisection_isolates_each_poison_message_and_writes_the_rest(conn):
    writer = await prepared(conn, "copy")
    messages = [m for n in range(10) for m in report_messages(f"s{n}", TS, processes=40)]
    poison_at = [3, 200, len(messages) - 1]
    for index in poison_at:
        kind, row = messages[index]
        messages[index] = ("p", (row[0], TS, 1, None, None, None, "bad\x00", "", *[None] * 9))

    result = await writer.commit(conn, messages)

    assert [index for index, _reason in result.poison] == poison_at
    assert all("CharacterNotInRepertoire" in reason for _index, reason in result.poison)
    assert result.inserted_total == len(messages) - len(poison_at)
    healthy = [kind for i, (kind, _row) in enumerate(messages) if i not in poison_at]
    assert await conn.fetchval("SELECT count(*) FROM process_samples") == healthy.count("p")
    assert await conn.fetchval("SELECT count(*) FROM process_group_samples") == healthy.count(
        "g")


async def test_newer_host_metadata_wins_whatever_the_order(conn):
    writer = await prepared(conn, "copy")
    newer = ("h", ("srv", TS + 60, "r2", "new-name", "linux", "6.9", "b2", "0.2.0"))
    older = ("h", ("srv", TS, "r1", "old-name", "linux", "6.8", "b1", "0.1.0"))
    await writer.commit(conn, [newer])
    await writer.commit(conn, [older])  # a late redelivery of an older report

    server = await conn.fetchrow("SELECT * FROM servers")
    assert (server["hostname"], server["agent_version"], server["last_report_id"]) == (
        "new-name", "0.2.0", "r2")
    assert server["first_seen_at"] == datetime.fromtimestamp(TS, UTC)
    assert server["last_seen_at"] == server["metadata_at"] == datetime.fromtimestamp(
        TS + 60, UTC)


async def test_samples_before_any_host_message_create_the_server_without_metadata(conn):
    writer = await prepared(conn, "staging")
    await writer.commit(conn, report_messages("early", TS)[2:])  # groups and processes only

    server = await conn.fetchrow("SELECT * FROM servers")
    assert server["server_id"] == "early" and server["hostname"] is None
    assert server["metadata_at"] is None


def test_errors_from_values_are_poison_and_transport_errors_are_not():
    assert is_poison(asyncpg.NotNullViolationError("null"))
    assert is_poison(asyncpg.CharacterNotInRepertoireError("nul"))
    assert is_poison(asyncpg.ProgramLimitExceededError("index row too big"))
    assert is_poison(TypeError("str is not int")) and is_poison(OverflowError("int64"))
    assert not is_poison(ConnectionResetError())
    assert not is_poison(asyncpg.ConnectionDoesNotExistError("gone"))
    assert not is_poison(asyncpg.AdminShutdownError("shutting down"))
    assert not is_poison(asyncpg.UndefinedTableError("no table"))
    assert not is_poison(asyncpg.DeadlockDetectedError("deadlock"))


def _poison_process(server_id: str, pid: int) -> tuple[str, tuple]:
    return ("p", (server_id, TS, pid, None, None, None, "bad\x00", "", *[None] * 9))


async def test_isolation_costs_one_statement_per_probe_and_upserts_servers_once(conn):
    writer = await prepared(conn, "copy")
    messages = [m for n in range(10) for m in report_messages(f"s{n}", TS, processes=40)]
    poison_at = [5, 222, 401]
    for index in poison_at:
        messages[index] = _poison_process(messages[index][1][0], 9000 + index)
    statements: list[str] = []
    conn.add_query_logger(lambda record: statements.append(record.query))

    result = await writer.commit(conn, messages)

    assert [index for index, _ in result.poison] == poison_at
    assert result.inserted_total == len(messages) - len(poison_at)
    # After the first attempt (one statement per table + servers, or a failed COPY): probes
    # of one INSERT each under a savepoint, the servers upsert once, nothing staged again.
    isolation = statements[statements.index("BEGIN;", 1):]
    assert not [q for q in isolation if q.startswith(("TRUNCATE", "COPY"))]
    assert sum("INTO servers" in q for q in isolation) == 1
    # The NUL is in the name, which the identity holds: the identities are bisected, then
    # the points of the messages that landed go in at once.
    # (asyncpg's query logger does not see COPY: an identity probe's COPY to its staging
    # table is not in ``statements``.)
    probes = sum("INSERT INTO process_identities" in q for q in isolation)
    n, k = len(messages), len(poison_at)
    assert 1 <= probes <= 2 * k * math.ceil(math.log2(n)) + 1
    assert sum(q.startswith("INSERT INTO process_points") for q in isolation) == 1


async def test_late_points_are_marked_for_the_rollups_once_as_the_triggers_would(conn):
    # TS is in the past: late. The writer marks its batch's late points itself (the triggers
    # skip its transaction, migrations/0008: each mark once); isolation goes through the
    # triggers: the same marks.
    writer = await prepared(conn, "copy")
    fresh = report_messages("fresh", time.time())
    await writer.commit(conn, [*report_messages("a", TS), *report_messages("a", TS + 60),
                               *fresh])
    poison = _poison_process("b", 9000)
    result = await writer.commit(conn, [*report_messages("b", TS), poison,
                                        *report_messages("b", TS + 60)])
    assert len(result.poison) == 1

    rows = await conn.fetch("SELECT source, server_id, extract(epoch FROM ts)::float8 AS m "
                            "FROM rollup_dirty ORDER BY 1, 2, 3")
    minutes = [TS - TS % 60, TS + 60 - TS % 60]
    assert [(r["source"], r["server_id"], r["m"]) for r in rows] == [
        (source, server, minute) for source in ("groups", "processes")
        for server in ("a", "b") for minute in minutes]


async def test_identity_and_server_sightings_stay_behind_the_workers_clock(conn):
    writer = await prepared(conn, "copy")
    ahead = time.time() + 3600  # a host whose clock is an hour ahead
    await writer.commit(conn, report_messages("ahead", ahead))
    now = await conn.fetchval("SELECT extract(epoch FROM now())::float8")
    for table, column in (("process_identities", "last_seen"), ("process_groups", "last_seen"),
                          ("servers", "last_seen_at")):
        newest = await conn.fetchval(
            f"SELECT extract(epoch FROM max({column}))::float8 FROM {table}")
        assert newest <= now + 5, (table, newest, now)
    # the samples keep their own time
    assert await conn.fetchval(
        "SELECT min(extract(epoch FROM ts))::float8 FROM process_points") == pytest.approx(ahead)


async def test_isolation_hands_back_what_it_has_not_resolved_by_the_deadline(conn):
    writer = await prepared(conn, "copy")
    messages = report_messages("slow", TS, processes=64)
    for index in range(4, len(messages), 2):  # half the processes are poison
        messages[index] = _poison_process("slow", 9000 + index)
    ticks = iter(range(10_000))  # the clock moves one second per look

    result = await writer.commit(conn, messages, deadline_s=20, clock=lambda: next(ticks))

    resolved = {i for i, _ in result.poison} | set(result.handed_back)
    assert result.handed_back and result.poison
    landed = await conn.fetchval("SELECT count(*) FROM process_samples")
    # Every message is exactly one of: landed, poison, handed back (unwritten).
    process_indexes = [i for i, (kind, _) in enumerate(messages) if kind == "p"]
    assert landed + len([i for i in process_indexes if i in resolved]) == len(process_indexes)
    assert not set(result.handed_back) & {i for i, _ in result.poison}
    assert result.inserted["process_samples"] == landed


async def test_isolation_stops_at_once_when_the_worker_is_stopping(conn):
    writer = await prepared(conn, "copy")
    messages = report_messages("stopping", TS, processes=20)
    messages[7] = _poison_process("stopping", 9007)

    result = await writer.commit(conn, messages, stopping=lambda: True)

    # Nothing probed: every message with rows is handed back; the host message (no rows of
    # its own) is written by the one servers upsert.
    assert result.poison == [] and result.handed_back == list(range(1, len(messages)))
    assert await conn.fetchval("SELECT count(*) FROM process_samples") == 0
    assert await conn.fetchval("SELECT count(*) FROM servers") == 1


def steady_report(ts: float) -> list[tuple[str, tuple]]:
    """A report of the same 10 processes (fixed start times) and 2 groups."""
    return [(kind, (*row[:3], TS - 86400 + row[2], *row[4:]) if kind == "p" else row)
            for kind, row in report_messages("srv", ts, processes=10)]


async def test_identities_are_written_once_then_refreshed_at_most_every_refresh_s(conn):
    writer = await prepared(conn, "copy")
    writer.identities.trust_s = math.inf  # TS is months old: trust what was written anyway
    await writer.commit(conn, steady_report(TS))
    assert writer.identities.written == 12  # 10 processes + 2 groups
    await writer.commit(conn, steady_report(TS + 15))
    await writer.commit(conn, steady_report(TS + 45))
    assert writer.identities.written == 12  # within REFRESH_S: no identity written
    await writer.commit(conn, steady_report(TS + 60))
    assert writer.identities.written == 24  # 60 s > REFRESH_S after the written last_seen

    seen = await conn.fetch("SELECT first_seen, last_seen FROM process_identities")
    assert len(seen) == 10
    assert {(r["first_seen"].timestamp(), r["last_seen"].timestamp()) for r in seen} == {
        (TS, TS + 60)}
    assert await conn.fetchval("SELECT count(*) FROM process_samples") == 40
    # a late sample older than first_seen is written through at once
    await writer.commit(conn, steady_report(TS - 15))
    assert await conn.fetchval(
        "SELECT count(*) FROM process_identities WHERE first_seen = to_timestamp($1::float8)",
        TS - 15) == 10


async def test_a_key_held_by_another_identity_is_poison_and_nothing_is_merged(conn,
                                                                              monkeypatch):
    writer = await prepared(conn, "copy")
    [_, _, process] = report_messages("srv", TS, processes=1, groups=0)
    await writer.commit(conn, [process])
    key = await conn.fetchval("SELECT key FROM process_identities")
    # an identity that hashes to the same key (forged: md5 collisions do not come by chance)
    other = ("p", ("other-server", TS, 999, TS - 10, *process[1][4:]))
    forge_keys(monkeypatch, {("other-server", 999, TS - 10): key})
    result = await writer.commit(conn, [other, report_messages("b", TS, processes=1,
                                                                 groups=0)[2]])

    assert [index for index, _ in result.poison] == [0]
    assert "collides" in result.poison[0][1]
    rows = await conn.fetch("SELECT server_id, pid FROM process_samples ORDER BY server_id")
    assert [tuple(r) for r in rows] == [("b", 100), ("srv", 100)]


async def test_isolation_writes_identities_once_per_key_and_no_point_of_a_poison_message(conn):
    writer = await prepared(conn, "copy")
    # Two reports of the same processes in one batch, each process's two samples side by side
    # (so that the probes that pass hold both: one identity row per process, merged, as an
    # upsert cannot update a row twice in one statement), and one poison message at the end.
    first, second = steady_report(TS), steady_report(TS + 15)
    messages = [m for m in first + second if m[0] != "p"]
    messages += [m for pair in zip(first, second, strict=True) if pair[0][0] == "p"
                 for m in pair]
    messages.append(_poison_process("srv", 9005))

    result = await writer.commit(conn, messages)

    assert [index for index, _ in result.poison] == [len(messages) - 1]
    assert result.handed_back == []
    seen = await conn.fetch("SELECT pid, first_seen, last_seen FROM process_identities")
    assert len(seen) == 10 and 9005 not in {r["pid"] for r in seen}
    assert {(r["first_seen"].timestamp(), r["last_seen"].timestamp()) for r in seen} == {
        (TS, TS + 15)}
    assert await conn.fetchval("SELECT count(*) FROM process_points") == 20
    assert await conn.fetchval("SELECT count(*) FROM process_group_points") == 4


async def test_identity_upserts_in_one_transaction_each_write_only_their_own_rows(conn):
    # Isolation probes upsert several times in one transaction: each upsert empties the
    # staging table it reads, or the next would write (and count) the previous one's rows.
    from digest_worker.rows import build_rows
    writer = await prepared(conn, "copy")
    identities = build_rows(steady_report(TS)).identities
    keys = sorted(identities)
    async with conn.transaction():
        await writer.identities.write(conn, {k: identities[k] for k in keys[:4]}, {})
        await writer.identities.write(conn, {k: identities[k] for k in keys[4:]}, {})
        assert await conn.fetchval("SELECT count(*) FROM staging_process_identities") == 0
    assert writer.identities.written == 10
    assert sorted(await conn.fetchval("SELECT array_agg(key) FROM process_identities")) == keys


async def test_names_are_noted_with_the_identities_and_refreshes_stay_hot(conn):
    # migrations/0007: process_names follows the identity upsert in its statement; no index
    # holds last_seen, so a refresh of last_seen is a HOT update.
    writer = await prepared(conn, "copy")
    await writer.commit(conn, steady_report(TS))
    names = "SELECT name, first_seen, command FROM process_names ORDER BY name"
    noted = [tuple(r) for r in await conn.fetch(names)]
    assert noted == sorted((f"proc-{j}", datetime.fromtimestamp(TS, UTC),
                            f"/usr/bin/proc-{j} --flag") for j in range(10))
    updates = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1"
    before = await conn.fetchrow(updates, "process_identities")

    await writer.commit(conn, steady_report(TS + 60))  # a refresh: last_seen moves
    await conn.execute("SELECT pg_stat_force_next_flush()")
    after = await wait_until(
        lambda: _updated(conn, updates, before["n_tup_upd"] + 10),
        "the refresh's 10 updates in pg_stat_user_tables")
    assert after["n_tup_hot_upd"] - before["n_tup_hot_upd"] == 10, (before, after)
    assert [tuple(r) for r in await conn.fetch(names)] == noted

    # a late sample moves an identity's first_seen back, and its name's with it
    await writer.commit(conn, steady_report(TS - 15))
    assert {r["first_seen"].timestamp() for r in await conn.fetch(names)} == {TS - 15}


async def _updated(conn, sql: str, at_least: int):
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(sql, "process_identities")
    return row if row["n_tup_upd"] >= at_least else None
