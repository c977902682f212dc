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

Whatever the method, the batch starts with the upserts of the identities it needs
(digest_worker/identity.py: most batches need none) and ends with one statement that marks
the batch's late points for the rollups (the points' triggers skip the writer's batches:
migrations/0008) and upserts ``servers`` (last_seen_at, and the metadata of the newest host
message) in server_id order, then COMMIT.

A batch that fails because of its *data* (see ``is_poison``) is isolated in one transaction
(``_Isolation``): its rows are built once, per message, then bisected per table where each probe
is *one* statement (``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING``) under a
savepoint; a probe that passes has written its rows, a probe that fails is split in two. The
identities are probed first, the same way (one upsert per probe, rows of one key merged, after
a ``COPY`` to the identities' staging table: identity.py), and a message whose identity is not
written writes no point. So k poison messages in a batch of n
cost at most ~2·k·log2(n) probes per table (3 statements each), and nothing is staged
again. The servers upsert then runs once for the messages that landed (bisected the same way
only if it fails itself). The poison messages are reported back (the worker dead-letters
them) and every other row is written. Any other error (connection lost,
server shutting down, …) propagates: the worker retries the whole batch and acknowledges
nothing meanwhile.

Isolation stops probing once the batch's deadline passes (``deadline_s``, the worker's
``batch_timeout_s``) or the worker is stopping: what is resolved is committed, the messages
not yet resolved are returned as ``handed_back`` (the worker leaves them unacknowledged; they
are delivered again later, and ``max_deliveries`` bounds how often). One host's poison
cannot hold the worker, and every other host's backlog, for longer than that.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from digest_worker.identity import FIRST, G_FIRST, IdentityWriter, merge_rows
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


# The batch's transaction tells the points' late-sample triggers that the writer marks the
# late points itself (migrations/0008): with the servers upsert, at the end of the batch.
WRITER_MARKS_LATE = "SET LOCAL procfleet.late_marked_by_writer = on"
MARK_LATE_AND_UPSERT_SERVERS = """
WITH late AS (
    INSERT INTO rollup_dirty (source, server_id, ts)
    SELECT DISTINCT m.source, m.server_id, date_trunc('minute', m.ts)
    FROM unnest($11::text[], $12::text[], $13::timestamptz[]) AS m(source, server_id, ts)
    WHERE m.ts < statement_timestamp() - rollup_late_after()
)""" + SERVERS_UPSERT


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
    handed_back: list[int] = field(default_factory=list)  # not resolved in time: not written
    fell_back: bool = False

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
        """Install the timestamp codec, create this connection's staging tables (points and
        identities) and learn the column types for unnest."""
        await install_codec(conn)
        await self.identities.prepare(conn)
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

    async def commit(self, conn: asyncpg.Connection, messages: list[Message], *,
                     deadline_s: float = float("inf"),
                     stopping: Callable[[], bool] = lambda: False,
                     clock: Callable[[], float] = time.monotonic) -> WriteResult:
        """Write ``messages`` and commit. Poison messages are returned, not raised; any other
        error is raised with nothing committed. Isolating poison stops at ``deadline_s`` (on
        ``clock``) or once ``stopping()``: the messages not resolved by then are returned in
        ``handed_back``, unwritten."""
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
        isolation = _Isolation(conn, self._unnest_sql, self.identities, lambda: (
            clock() >= deadline_s or stopping()))
        async with conn.transaction():
            return await isolation.run(messages)

    def _method_for_next_batch(self) -> str:
        if self.insert_method == "copy" and self._staging_batches_left > 0:
            self._staging_batches_left -= 1
            return "staging"
        return self.insert_method

    async def _write(self, conn: asyncpg.Connection, rows, method: str) -> WriteResult:
        result = WriteResult()
        await conn.execute(WRITER_MARKS_LATE)
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
            # After the points: its statement_timestamp() is not earlier than theirs, so it
            # marks at least what the triggers would have.
            marks = [(source, server_id, ts) for source, pairs in rows.late_marks.items()
                     for server_id, ts in pairs]
            await conn.execute(MARK_LATE_AND_UPSERT_SERVERS,
                               *zip(*rows.server_rows(), strict=True),
                               *(zip(*marks, strict=True) if marks else ([], [], [])))
        if rows.host_messages:
            result.inserted["servers"] = rows.host_messages
        return result


class _Isolation:
    """Find the poison messages of a batch inside the caller's transaction, writing the rest:
    each probe is one statement under a savepoint (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection, unnest_sql: dict[str, str],
                 identities: IdentityWriter, out_of_time: Callable[[], bool]) -> None:
        self.conn, self.unnest_sql, self.out_of_time = conn, unnest_sql, out_of_time
        self.identities = identities
        self.result = WriteResult()
        self.poison: dict[int, str] = {}
        self.handed_back: set[int] = set()

    async def run(self, messages: list[Message]) -> WriteResult:
        by_table: dict[str, list[tuple[int, Sequence[Any]]]] = {t: [] for t in TABLE_COLUMNS}
        processes: list[tuple[int, list]] = []
        groups: list[tuple[int, list]] = []
        for index, message in enumerate(messages):
            try:  # built once, per message, to know which message each row comes from
                rows = build_rows([message], self.identities)
            except Exception as exc:
                if not is_poison(exc):
                    raise
                self.poison[index] = describe_error(exc)
                continue
            processes += [(index, row) for row in rows.identities.values()]
            groups += [(index, row) for row in rows.groups.values()]
            for table, records in rows.tables.items():
                by_table[table] += [(index, record) for record in records]
        # Identities first: a message whose identity is poison (or handed back) writes no
        # point, and the points' late-sample triggers find the identity of every point.
        if processes:
            await self._bisect(processes, self._identity_probe(FIRST))
        if groups:
            await self._bisect(groups, self._identity_probe(G_FIRST))
        for table, items in by_table.items():
            if items:
                await self._bisect(items, self._insert_probe(table))
        landed = [i for i in range(len(messages))
                  if i not in self.poison and i not in self.handed_back]
        # Their rows are written: the servers upsert is tried once whatever the time (one
        # statement), and only bisected (bounded by time) if it fails.
        await self._bisect([(i, messages[i]) for i in landed], self._servers_probe,
                           first_unbounded=True)
        result = self.result
        result.poison = sorted(self.poison.items())
        result.handed_back = sorted(self.handed_back)
        return result

    def _insert_probe(self, table: str):
        sql = self.unnest_sql[table]

        async def probe(records: list[Sequence[Any]]) -> None:
            status = await self.conn.execute(sql, *zip(*records, strict=True))
            inserted = int(status.rsplit(" ", 1)[1])
            self.result.inserted[table] += inserted
            self.result.duplicates[table] += len(records) - inserted

        return probe

    def _identity_probe(self, first: int):
        # One upsert per probe. Rows of one key (a process sampled twice in the batch) are
        # merged first: ON CONFLICT cannot update a row twice in one statement.
        async def probe(rows: list[list]) -> None:
            merged = merge_rows(rows, first)
            if first == FIRST:
                await self.identities.write(self.conn, merged, {})
            else:
                await self.identities.write(self.conn, {}, merged)

        return probe

    async def _servers_probe(self, messages: list[Message]) -> None:
        rows = build_rows(messages)
        if rows.servers:
            await self.conn.execute(SERVERS_UPSERT, *zip(*rows.server_rows(), strict=True))
        if rows.host_messages:
            self.result.inserted["servers"] += rows.host_messages

    async def _bisect(self, items: list[tuple[int, Any]], probe,
                      first_unbounded: bool = False) -> None:
        """Run ``probe`` on ``items`` (``(message index, value)``), splitting what fails."""
        pending = [items]
        while pending:
            segment = pending.pop()
            # A message already known bad (another of its rows failed) is not tried again, nor
            # is one handed back (its identity was not written: neither are its points).
            segment = [(i, v) for i, v in segment
                       if i not in self.poison and i not in self.handed_back]
            if not segment:
                continue
            if first_unbounded:
                first_unbounded = False
            elif self.out_of_time():
                self.handed_back.update(i for i, _ in segment)
                continue
            try:
                async with self.conn.transaction():
                    await probe([value for _, value in segment])
            except Exception as exc:
                if not is_poison(exc):
                    raise
                if len({i for i, _ in segment}) == 1:
                    self.poison[segment[0][0]] = describe_error(exc)
                    continue
                middle = len(segment) // 2
                pending += [segment[middle:], segment[:middle]]  # first half probed first


async def _column_types(conn: asyncpg.Connection, table: str, columns: tuple[str, ...]):
    found = dict(await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", table,
    ))
    missing = [c for c in columns if c not in found]
    if missing:
        raise asyncpg.UndefinedColumnError(f"table {table} has no column(s) {missing}")
    return [found[c] for c in columns]
