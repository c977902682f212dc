"""A gateway against a database that predates a migration says "run procfleet migrate"
(503, kind ``schema``) for any of our functions, and lets a real bug surface."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest_gateway.errors import Unavailable
from ingest_gateway.query.database import SCHEMA_FUNCTIONS, QueryDatabase

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def test_every_function_of_the_migrations_is_known():
    created = set()
    for path in MIGRATIONS.glob("*.sql"):
        created |= set(re.findall(r"CREATE (?:OR REPLACE )?FUNCTION (\w+)", path.read_text()))
    assert created and created <= SCHEMA_FUNCTIONS


@pytest.mark.integration
async def test_a_database_without_the_newer_functions_says_migrate(fresh_database):
    database = QueryDatabase(await fresh_database())
    try:
        with pytest.raises(Unavailable) as info:
            async with database.connection() as conn:
                await conn.fetch("SELECT * FROM process_points_between(now(), now())")
        assert info.value.kind == "schema" and "procfleet migrate" in str(info.value)
        assert "process_points_between" in str(info.value)
        with pytest.raises(Exception) as bug:  # not ours: a bug, not a missing migration
            async with database.connection() as conn:
                await conn.fetch("SELECT no_such_function(1)")
        assert not isinstance(bug.value, Unavailable)
    finally:
        await database.close()
