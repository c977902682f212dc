"""Write one batch of decoded messages to PostgreSQL: one round trip per table, one
transaction, exactly-once rows.

Three ways to land a table's rows (``insert_method``; bench/bench_writer.py measures them):

``copy``     ``COPY`` straight into the table — the fastest, but COPY has no ON CONFLICT: a
             row already there (a redelivery) aborts it with a unique violation. The batch is
             then rolled back and written again with ``staging``, and the next
             ``FALLBACK_BATCHES`` batches go straight to ``staging`` (after a crash the
             redeliveries come in a run). The default.
``staging``  ``COPY`` into a temporary table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``.
``unnest``   ``INSERT … SELECT FROM unnest($1::…[], …) ON CONFLICT DO NOTHING``.

Whatever the method, the batch ends with one upsert of ``servers`` (last_seen_at, and the
metadata of the newest host message) in server_id order, then COMMIT.

A batch that fails because of its *data* (see ``is_poison``) is isolated by bisection inside
one transaction, each half under a savepoint, until the single messages that fail are known;
they are reported back (the worker dead-letters them) and every other row is written. Any
other error (connection lost, server shutting down, …) propagates: the worker retries the
whole batch and acknowledges nothing meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from digest_worker.identity import IdentityWriter
from digest_worker.rows import SERVER_COLUMNS, TABLE_COLUMNS, TABLE_TARGET, build_rows
from digest_worker.timestamps import install_codec

FALLBACK_BATCHES = 10
# SQLSTATE classes caused by the values of a row: data exception, integrity constraint
# violation, program limit exceeded (e.g. an index row too large).
POISON_SQLSTATE_CLASSES = ("22", "23", "54")

Message = tuple[str, Sequence[Any]]

SERVERS_UPSERT = f"""
INSERT INTO servers ({", ".join(SERVER_COLUMNS)})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
ON CONFLICT (server_id) DO UPDATE SET
    first_seen_at  = LEAST(servers.first_seen_at, EXCLUDED.first_seen_at),
    last_seen_at   = GREATEST(servers.last_seen_at, EXCLUDED.last_seen_at),
    hostname       = CASE WHEN {{newer}} THEN EXCLUDED.hostname ELSE servers.hostname END,
    os_type        = CASE WHEN {{newer}} THEN EXCLUDED.os_type ELSE servers.os_type END,
    os_version     = CASE WHEN {{newer}} THEN EXCLUDED.os_version ELSE servers.os_version END,
    boot_id        = CASE WHEN {{newer}} THEN EXCLUDED.boot_id ELSE servers.boot_id END,
    agent_version  = CASE WHEN {{newer}} THEN EXCLUDED.agent_version
                          ELSE servers.agent_version END,
    last_report_id = CASE WHEN {{newer}} THEN EXCLUDED.last_report_id
                          ELSE servers.last_report_id END,
    metadata_at    = GREATEST(servers.metadata_at, EXCLUDED.metadata_at)
""".format(newer="EXCLUDED.metadata_at >= COALESCE(servers.metadata_at, '-infinity')")


def staging_table(table: str) -> str:
    return f"staging_{table}"


def is_poison(exc: BaseException) -> bool:
    """True when ``exc`` comes from the values of the rows (retrying cannot help; isolate the
    message), False for everything else (connection, server state, …: retry)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in POISON_SQLSTATE_CLASSES
    # asyncpg encodes values client-side and raises TypeError / OverflowError / ValueError
    # (its client-side DataError is a ValueError) for a value that does not fit the column.
    return isinstance(exc, (TypeError, ValueError, OverflowError))


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a dead-lettered message."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).splitlines()[0] if str(exc) else ""
    prefix = f"{type(exc).__name__}" + (f" [{state}]" if state else "")
    return f"{prefix}: {text}"[:500]


@dataclass
class WriteResult:
    """What a batch did: rows inserted and duplicates absorbed per table, and the messages that
    could not be written (index in the batch, reason)."""

    inserted: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    poison: list[tuple[int, str]] = field(default_factory=list)
    fell_back: bool = False

    def add(self, other: WriteResult) -> None:
        self.inserted.update(other.inserted)
        self.duplicates.update(other.duplicates)
        self.poison.extend(other.poison)
        self.fell_back |= other.fell_back

    @property
    def inserted_total(self) -> int:
        return sum(self.inserted.values())

    @property
    def duplicates_total(self) -> int:
        return sum(self.duplicates.values())


class BatchWriter:
    """Writes batches with one ``insert_method``; ``prepare`` must run on every new
    connection (it is the pool's ``init``)."""

    def __init__(self, insert_method: str = "copy") -> None:
        self.insert_method = insert_method
        self._staging_batches_left = 0
        self._unnest_sql: dict[str, str] = {}
        self.identities = IdentityWriter()

    async def prepare(self, conn: asyncpg.Connection) -> None:
        """Install the timestamp codec, create this connection's staging tables and learn
        the column types for unnest."""
        await install_codec(conn)
        for table, columns in TABLE_COLUMNS.items():
            target = TABLE_TARGET[table]
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {staging_table(table)} "
                f"(LIKE {target} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            if table not in self._unnest_sql:
                types = await _column_types(conn, target, columns)
                params = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
                self._unnest_sql[table] = (
                    f"INSERT INTO {target} ({', '.join(columns)}) "
                    f"SELECT * FROM unnest({params}) ON CONFLICT DO NOTHING"
                )

    async def commit(self, conn: asyncpg.Connection, messages: list[Message]) -> WriteResult:
        """Write ``messages`` and commit. Poison messages are returned, not raised; any other
        error is raised with nothing committed."""
        method = self._method_for_next_batch()
        try:
            rows = build_rows(messages, self.identities)
            try:
                async with conn.transaction():
                    result = await self._write(conn, rows, method)
            except asyncpg.UniqueViolationError:
                if method != "copy":
                    raise
                # COPY has no ON CONFLICT: some rows are already there (a redelivery). Write
                # the batch again with ON CONFLICT, and keep doing so for a while.
                self._staging_batches_left = FALLBACK_BATCHES
                async with conn.transaction():
                    result = await self._write(conn, rows, "staging")
                result.fell_back = True
            self.identities.remember(rows.identities, rows.groups)
            return result
        except Exception as exc:
            if not is_poison(exc):
                raise
        async with conn.transaction():
            return await self._isolate(conn, messages, list(range(len(messages))))

    def _method_for_next_batch(self) -> str:
        if self.insert_method == "copy" and self._staging_batches_left > 0:
            self._staging_batches_left -= 1
            return "staging"
        return self.insert_method

    async def _isolate(
        self, conn: asyncpg.Connection, messages: list[Message], indexes: list[int]
    ) -> WriteResult:
        """Bisect ``indexes`` (known to contain poison) under savepoints."""
        if len(indexes) == 1:
            return await self._try_one(conn, messages, indexes[0])
        result = WriteResult()
        middle = len(indexes) // 2
        for half in (indexes[:middle], indexes[middle:]):
            try:
                async with conn.transaction():
                    rows = build_rows([messages[i] for i in half])
                    result.add(await self._write(conn, rows, self._safe_method, fresh=True))
            except Exception as exc:
                if not is_poison(exc):
                    raise
                result.add(await self._isolate(conn, messages, half))
        return result

    async def _try_one(
        self, conn: asyncpg.Connection, messages: list[Message], index: int
    ) -> WriteResult:
        try:
            async with conn.transaction():
                rows = build_rows([messages[index]])
                return await self._write(conn, rows, self._safe_method, fresh=True)
        except Exception as exc:
            if not is_poison(exc):
                raise
            return WriteResult(poison=[(index, describe_error(exc))])

    @property
    def _safe_method(self) -> str:
        # Bisection needs ON CONFLICT: a half may hold rows that are already there.
        return "unnest" if self.insert_method == "unnest" else "staging"

    async def _write(self, conn: asyncpg.Connection, rows, method: str,
                     fresh: bool = False) -> WriteResult:
        result = WriteResult()
        # Identities before points: the late-sample trigger of the points reads them.
        await self.identities.write(conn, rows.identities, rows.groups)
        for table, records in rows.tables.items():
            if not records:
                continue
            columns, target = TABLE_COLUMNS[table], TABLE_TARGET[table]
            if method == "copy":
                await conn.copy_records_to_table(target, records=records, columns=columns)
                inserted = len(records)
            elif method == "staging":
                stage = staging_table(table)
                if fresh:  # an earlier savepoint of this transaction may have left rows
                    await conn.execute(f"TRUNCATE {stage}")
                await conn.copy_records_to_table(stage, records=records, columns=columns)
                cols = ", ".join(columns)
                status = await conn.execute(
                    f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} "
                    f"ON CONFLICT DO NOTHING"
                )
                inserted = int(status.rsplit(" ", 1)[1])
            else:
                status = await conn.execute(self._unnest_sql[table], *zip(*records, strict=True))
                inserted = int(status.rsplit(" ", 1)[1])
            result.inserted[table] = inserted
            result.duplicates[table] = len(records) - inserted
        if rows.servers:
            await conn.execute(SERVERS_UPSERT, *zip(*rows.server_rows(), strict=True))
        if rows.host_messages:
            result.inserted["servers"] = rows.host_messages
        return result


async def _column_types(conn: asyncpg.Connection, table: str, columns: tuple[str, ...]):
    found = dict(await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", table,
    ))
    missing = [c for c in columns if c not in found]
    if missing:
        raise asyncpg.UndefinedColumnError(f"table {table} has no column(s) {missing}")
    return [found[c] for c in columns]
