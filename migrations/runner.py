"""Apply the numbered SQL files of this folder to a PostgreSQL database.

The files ``NNNN_name.sql`` are the single source of the schema. ``apply_migrations`` applies
the pending ones in version order, each in its own transaction together with its row in
``schema_migrations`` (version, name, sha256 checksum, applied_at), so a file is either fully
applied and recorded or not at all.

Two runners at once are safe: everything happens under a session-level
``pg_advisory_lock``; the second runner waits, then finds nothing pending.

An applied file must never change: if its checksum differs from the recorded one the runner
refuses to run and names the file (write a new migration instead). A version recorded in the
database but missing from the folder means the database is newer than this code: refused too.

Errors::

    ProcfleetError
    └── MigrationError              a migration cannot be applied (carries the file)
        ├── EditedMigrationError    an applied file was changed afterwards
        └── UnknownMigrationError   the database has a version this code does not know
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from agent.errors import ProcfleetError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
FILE_PATTERN = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Any constant works as long as nothing else in the database uses it: "procfleet" in ASCII.
ADVISORY_LOCK_KEY = 0x70726F63666C65

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(ProcfleetError):
    """A migration cannot be applied; ``path`` is the file concerned (or None)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        self.path = path
        super().__init__(message)


class EditedMigrationError(MigrationError):
    """An applied migration file was edited afterwards."""

    def __init__(self, path: Path, recorded: str, actual: str) -> None:
        self.recorded, self.actual = recorded, actual
        super().__init__(
            f"migration {path.name} was already applied with checksum {recorded[:12]}… but the "
            f"file now has {actual[:12]}…: applied migrations must not be edited; restore the "
            f"file and put the change in a new migration",
            path,
        )


class UnknownMigrationError(MigrationError):
    """The database records a migration that this code does not have."""

    def __init__(self, version: int, name: str) -> None:
        self.version = version
        super().__init__(
            f"the database has migration {version:04d}_{name} which is not in this release: "
            f"the database is newer than the code (upgrade procfleet)"
        )


@dataclass(frozen=True)
class Migration:
    """One SQL file: ``version`` from its number, ``checksum`` the sha256 of its bytes."""

    version: int
    name: str
    path: Path
    sql: str = field(repr=False)
    checksum: str


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of ``directory`` in version order."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(
                f"migration file {path.name} is not named NNNN_lowercase_name.sql", path
            )
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"migrations {found[version].path.name} and {path.name} share version "
                f"{version:04d}", path,
            )
        data = path.read_bytes()
        found[version] = Migration(
            version, match["name"], path, data.decode(), hashlib.sha256(data).hexdigest()
        )
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR
) -> list[Migration]:
    """Apply the pending migrations of ``directory``; return those applied (empty if none)."""
    migrations = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(CREATE_TABLE)
        recorded = {
            row["version"]: row
            for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        }
        _check_recorded(migrations, recorded)
        applied = []
        for migration in migrations:
            if migration.version in recorded:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version, migration.name, migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.path.name} failed: {type(exc).__name__}: {exc}",
                    migration.path,
                ) from exc
            log.info(
                "migration applied",
                extra={"kv": {"version": migration.version, "name": migration.name}},
            )
            applied.append(migration)
        return applied
    finally:
        # A broken connection releases the lock by itself; do not hide the original error.
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


def _check_recorded(migrations: list[Migration], recorded: dict) -> None:
    by_version = {m.version: m for m in migrations}
    for version, row in sorted(recorded.items()):
        migration = by_version.get(version)
        if migration is None:
            raise UnknownMigrationError(version, row["name"])
        if migration.checksum != row["checksum"]:
            raise EditedMigrationError(migration.path, row["checksum"], migration.checksum)


async def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Connect to ``database_url``, apply the pending migrations, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await apply_migrations(conn, directory)
    finally:
        await conn.close()
