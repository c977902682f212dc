"""Migration 0007: an existing deployment's identities get their process_names and
process_texts rows, and no index of the identity tables holds last_seen (the writer's
refreshes stay HOT)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from migrations.runner import discover, migrate

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_names_and_texts_are_backfilled_and_no_index_holds_last_seen(fresh_database,
                                                                         tmp_path):
    url = await fresh_database()
    for migration in discover():
        if migration.version <= 5:
            shutil.copy(migration.path, tmp_path / migration.path.name)
    await migrate(url, tmp_path)
    conn = await asyncpg.connect(url)
    try:
        rows = [("srv-a", 10, "nginx", "nginx --second", T0 + timedelta(hours=2)),
                ("srv-a", 11, "nginx", "nginx --first", T0),
                ("srv-a", 12, "cron", "cron -f", T0 + timedelta(minutes=5)),
                ("srv-b", 13, "nginx", "nginx --b", T0 + timedelta(hours=1))]
        await conn.executemany(
            "INSERT INTO process_identities (key, server_id, pid, start_time, first_seen, "
            "last_seen, name, command) VALUES (process_key($1, $2, $5), $1, $2, $5, $5, "
            "$5 + interval '90 minutes', $3, $4)", rows)
        await migrate(url)

        names = await conn.fetch("SELECT server_id, name, first_seen, command "
                                 "FROM process_names ORDER BY 1, 2")
        assert [tuple(r) for r in names] == [
            ("srv-a", "cron", T0 + timedelta(minutes=5), "cron -f"),
            ("srv-a", "nginx", T0, "nginx --first"),
            ("srv-b", "nginx", T0 + timedelta(hours=1), "nginx --b")]
        hours = await conn.fetch("SELECT last_seen, last_seen_hour FROM process_identities")
        assert all(r["last_seen_hour"] == r["last_seen"].replace(minute=0) for r in hours)
        indexed = await conn.fetch(
            "SELECT x.indrelid::regclass::text AS tab, a.attname FROM pg_index x "
            "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey) "
            "WHERE x.indrelid IN ('process_identities'::regclass, 'process_groups'::regclass)")
        assert {r["attname"] for r in indexed} >= {"last_seen_hour"}
        assert "last_seen" not in {r["attname"] for r in indexed}
        # the search's expression indexes hash name and command, nothing that moves
        expressions = await conn.fetch(
            "SELECT pg_get_expr(indexprs, indrelid) AS e FROM pg_index WHERE indexprs IS NOT "
            "NULL AND indrelid IN ('process_identities'::regclass, 'process_groups'::regclass)")
        assert sorted(r["e"] for r in expressions) == [
            "hashtextextended(command, (0)::bigint)", "hashtextextended(name, (0)::bigint)"]
        texts = await conn.fetch("SELECT hash, text FROM process_texts ORDER BY text")
        assert [r["text"] for r in texts] == [
            "cron", "cron -f", "nginx", "nginx --b", "nginx --first", "nginx --second"]
        for row in texts:
            assert row["hash"] == await conn.fetchval("SELECT hashtextextended($1, 0)",
                                                      row["text"])
    finally:
        await conn.close()
