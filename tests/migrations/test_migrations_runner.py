"""The migration runner: applies pending files in order, once, under a lock, and refuses an
edited history."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from migrations.runner import (
    MIGRATIONS_DIR,
    EditedMigrationError,
    MigrationError,
    UnknownMigrationError,
    discover,
    migrate,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def empty_url(fresh_database):
    return await fresh_database()


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql)
    return path


async def fetch(url: str, query: str) -> list[dict]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def test_migrations_apply_on_an_empty_database_and_are_a_noop_the_second_time(
        empty_url):
    applied = await migrate(empty_url)

    assert [m.version for m in applied] == [m.version for m in discover()]
    recorded = await fetch(empty_url, "SELECT version, name, checksum, applied_at "
                                      "FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["checksum"]) for r in recorded] == [
        (m.version, m.checksum) for m in discover()]
    assert all(r["applied_at"] is not None for r in recorded)
    assert await migrate(empty_url) == []


async def test_schema_keys_partitioning_and_no_foreign_keys(empty_url):
    await migrate(empty_url)
    keys = {r["table"]: r["columns"] for r in await fetch(empty_url, """
        SELECT c.conrelid::regclass::text AS table,
               array_agg(a.attname::text ORDER BY k.ord) AS columns
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.contype = 'p' AND c.conrelid::regclass::text IN
              ('servers', 'snapshots', 'process_group_points', 'process_points',
               'process_identities', 'process_groups')
        GROUP BY 1""")}
    assert keys == {
        "servers": ["server_id"],
        "snapshots": ["server_id", "ts", "sha256"],
        "process_group_points": ["key", "ts"],
        "process_points": ["key", "ts"],
        "process_identities": ["key"],
        "process_groups": ["key"],
    }
    partitioned = {r["table"]: r["strategy"] for r in await fetch(empty_url, """
        SELECT partrelid::regclass::text AS table, partstrat::text AS strategy
        FROM pg_partitioned_table""")}
    for table in ("snapshots", "process_group_points", "process_points"):
        assert partitioned[table] == "r"
    foreign = await fetch(empty_url, "SELECT conname FROM pg_constraint WHERE contype = 'f'")
    assert foreign == []


async def test_an_edited_applied_migration_is_refused_with_its_name(empty_url, tmp_path):
    for migration in discover():
        shutil.copy(migration.path, tmp_path / migration.path.name)
    await migrate(empty_url, tmp_path)
    edited = tmp_path / discover()[0].path.name
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
    write(tmp_path, "0900_later.sql", "CREATE TABLE later (id int);")

    with pytest.raises(EditedMigrationError) as caught:
        await migrate(empty_url, tmp_path)

    assert caught.value.path == edited
    assert edited.name in str(caught.value) and "new migration" in str(caught.value)
    assert await fetch(empty_url, "SELECT to_regclass('later') AS t") == [{"t": None}]


async def test_a_database_newer_than_the_code_is_refused(empty_url, tmp_path):
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
    await migrate(empty_url, tmp_path)
    (tmp_path / "0002_b.sql").unlink()

    with pytest.raises(UnknownMigrationError, match="0002_b"):
        await migrate(empty_url, tmp_path)


async def test_a_failing_migration_changes_nothing_and_names_its_file(empty_url, tmp_path):
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    bad = write(tmp_path, "0002_bad.sql", "CREATE TABLE half (id int);\nSELECT no_such();")

    with pytest.raises(MigrationError) as caught:
        await migrate(empty_url, tmp_path)

    assert caught.value.path == bad and "0002_bad.sql" in str(caught.value)
    assert await fetch(empty_url, "SELECT version FROM schema_migrations") == [{"version": 1}]
    assert await fetch(empty_url, "SELECT to_regclass('half') AS t") == [{"t": None}]


async def test_two_runners_at_once_apply_each_migration_once(empty_url, tmp_path):
    # slow enough that the second runner arrives while the first holds the lock
    write(tmp_path, "0001_slow.sql", "CREATE TABLE slow (id int); SELECT pg_sleep(0.5);")
    write(tmp_path, "0002_counter.sql", "CREATE TABLE runs (id int); "
                                        "INSERT INTO runs VALUES (1);")

    results = await asyncio.gather(migrate(empty_url, tmp_path), migrate(empty_url, tmp_path))

    assert sorted(len(applied) for applied in results) == [0, 2]
    assert await fetch(empty_url, "SELECT count(*) AS n FROM runs") == [{"n": 1}]


async def test_two_runners_of_the_real_migrations_at_once(empty_url):
    results = await asyncio.gather(migrate(empty_url), migrate(empty_url))
    assert sorted(len(applied) for applied in results) == [0, len(discover())]


def test_file_names_must_be_numbered(tmp_path):
    write(tmp_path, "0001_ok.sql", "SELECT 1;")
    write(tmp_path, "2_bad.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="2_bad.sql"):
        discover(tmp_path)


def test_two_files_cannot_share_a_version(tmp_path):
    write(tmp_path, "0001_one.sql", "SELECT 1;")
    write(tmp_path, "0001_other.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="share version 0001"):
        discover(tmp_path)


def test_the_shipped_migrations_are_numbered_from_one_without_gaps():
    versions = [m.version for m in discover(MIGRATIONS_DIR)]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_command_prints_what_it_applied(empty_url):
    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "procfleet", "migrate"], cwd=REPO, capture_output=True,
            text=True, timeout=60, env={**os.environ, "DATABASE_URL": empty_url})

    first = await asyncio.to_thread(run)
    second = await asyncio.to_thread(run)

    assert first.returncode == 0, first.stderr
    assert f"applied {discover()[0].path.name}" in first.stdout
    assert second.returncode == 0 and "(0 migration(s) applied now)" in second.stdout


def test_migrate_command_names_an_unreachable_database():
    from procfleet.embedded import free_port

    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/procfleet"
    result = subprocess.run([sys.executable, "-m", "procfleet", "migrate", "--database-url", url],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot reach postgresql://app:***@127.0.0.1:" in result.stderr
    assert "hunter2" not in result.stderr
