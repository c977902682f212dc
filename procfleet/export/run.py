"""The export stream: UTC day by UTC day, ``COPY … TO STDOUT`` into pyarrow, row groups out.

Memory stays bounded whatever the window: PostgreSQL's CSV passes through a pipe (1 MiB)
into pyarrow's CSV reader (1 MiB blocks), and at most ``ROW_GROUP_ROWS`` rows are held as
Arrow columns before they are written as one Parquet row group (docs/BENCHMARKS.md
"Exports" measures the RSS at two sizes). Every day is its own statement (the LAG of the
sample sources reads a short lookback before it), all inside one read-only REPEATABLE READ
transaction: the files are one consistent snapshot even while the workers write.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

import asyncpg
import pyarrow as pa
import pyarrow.csv as pacsv

from agent.errors import ProcfleetError
from procfleet.export.files import Sink, arrow_schema, day_path
from procfleet.export.sources import SOURCES, Source

log = logging.getLogger(__name__)

# 100k process rows are one ~25 MB row group in Arrow (~1.5 MB in the file): large enough for
# Parquet's encodings and for readers to skip by statistics; 250k added ~90 MiB of peak RSS.
ROW_GROUP_ROWS = 100_000
CSV_BLOCK_BYTES = 1 << 20
PIPE_BYTES = 1 << 20
PROGRESS_EVERY_S = 0.5


class ExportError(ProcfleetError):
    """The export cannot run as asked: ``field`` names the option, ``value`` what was given."""

    def __init__(self, field: str, reason: str, value: object = None) -> None:
        self.field, self.reason, self.value = field, reason, value
        shown = f" (got {value})" if value is not None else ""
        super().__init__(f"{field}: {reason}{shown}")


@dataclass(frozen=True)
class ExportSpec:
    """What to export: ``[start, end)`` (UTC), a source, a format, servers (None = all), and
    ``out``: the file, or with ``per_day`` the directory of one file per UTC day."""

    start: datetime
    end: datetime
    source: str
    file_format: str
    out: Path
    server_ids: tuple[str, ...] | None = None
    per_day: bool = False


@dataclass
class ExportResult:
    files: list[Path]
    rows: int
    bytes_written: int
    seconds: float


def days(start: datetime, end: datetime) -> list[tuple[date, datetime, datetime]]:
    """The UTC days ``[start, end)`` touches, each cut to the window."""
    out = []
    day = start.astimezone(UTC).date()
    while True:
        day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if day_start >= end:
            return out
        out.append((day, max(day_start, start), min(day_start + timedelta(days=1), end)))
        day += timedelta(days=1)


class Progress:
    """``rows, MB, rows/s`` redrawn on one stderr line, only when stderr is a terminal."""

    def __init__(self, stream: TextIO | None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None and stream.isatty() else None
        self.clock = clock
        self.started = clock()
        self.last = float("-inf")

    def show(self, label: str, rows: int, bytes_written: int, *, final: bool = False) -> None:
        now = self.clock()
        if self.stream is None or (not final and now - self.last < PROGRESS_EVERY_S):
            return
        self.last = now
        rate = rows / max(now - self.started, 1e-9)
        self.stream.write(f"\rexport {label}: {rows:,} rows, {bytes_written / 1e6:,.1f} MB, "
                          f"{rate:,.0f} rows/s\x1b[K" + ("\n" if final else ""))
        self.stream.flush()


def _csv_reader_options(schema: pa.Schema) -> dict:
    """How PostgreSQL's CSV reads back into ``schema``: NULL is an empty unquoted field, an
    empty string a quoted one; command lines may hold newlines."""
    return {
        "read_options": pacsv.ReadOptions(column_names=schema.names,
                                          block_size=CSV_BLOCK_BYTES),
        "parse_options": pacsv.ParseOptions(newlines_in_values=True),
        "convert_options": pacsv.ConvertOptions(
            column_types={field.name: field.type for field in schema},
            strings_can_be_null=True, quoted_strings_can_be_null=False),
    }


async def _copy_day(conn: asyncpg.Connection, source: Source, schema: pa.Schema, sink: Sink,
                    start: datetime, end: datetime, spec: ExportSpec,
                    show: Callable[[int, int], None]) -> None:
    """``COPY (<source SQL>) TO STDOUT (FORMAT csv)`` through a pipe into pyarrow's CSV
    reader (a thread), whose record batches go out in row groups of ``ROW_GROUP_ROWS``.

    PostgreSQL formats and Arrow's C++ parser types the values: 2-3x the rows/s of decoding
    asyncpg records in Python (docs/BENCHMARKS.md "Exports"). The pipe and the reader's
    blocks bound what is in flight. CSV goes to the file as PostgreSQL writes it."""
    ids = list(spec.server_ids) if spec.server_ids is not None else None
    if spec.file_format == "csv":
        async def write_csv(chunk: bytes) -> None:
            sink.write_csv(chunk)
            show(sink.rows, sink.bytes_written)

        status = await conn.copy_from_query(source.sql(), start, end, ids, output=write_csv,
                                            format="csv")
        sink.add_rows(int(status.split()[-1]))  # "COPY <rows>"
        return
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError, AttributeError):  # a larger pipe: fewer wake-ups
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    received = 0
    failure: list[BaseException] = []

    def consume() -> None:
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        try:
            with open(read_fd, "rb") as pipe:
                for batch in pacsv.open_csv(pipe, **_csv_reader_options(schema)):
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    if pending_rows >= ROW_GROUP_ROWS:
                        sink.write(pa.Table.from_batches(pending, schema))
                        pending, pending_rows = [], 0
                    show(sink.rows + pending_rows, sink.bytes_written)
            if pending:
                sink.write(pa.Table.from_batches(pending, schema))
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop's side
            failure.append(exc)

    thread = threading.Thread(target=consume, name="export-reader", daemon=True)
    thread.start()
    # Blocking writes on the loop's thread are fine: this COPY is the loop's only work, and
    # a write waits only while the reader is behind (that is the memory bound).
    pipe_out = open(write_fd, "wb", buffering=PIPE_BYTES)  # noqa: SIM115 - see finally

    async def write(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        pipe_out.write(chunk)

    try:
        await conn.copy_from_query(source.sql(), start, end, ids, output=write, format="csv")
    except BrokenPipeError:
        if not failure and thread.is_alive():
            raise
        # else the reader stopped: its own error is raised below
    finally:
        with contextlib.suppress(BrokenPipeError):  # the reader failed: its error wins
            pipe_out.close()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
    if failure:
        empty = (received == 0 and isinstance(failure[0], pa.ArrowInvalid)
                 and "Empty CSV" in str(failure[0]))
        if not empty:
            raise failure[0]


async def export(database_url: str, spec: ExportSpec, *, progress_stream: TextIO | None = None,
                 connect=asyncpg.connect) -> ExportResult:
    """Run ``spec``; every file is complete or absent (written aside, renamed at the end)."""
    source = SOURCES[spec.source]
    schema = arrow_schema(source.columns)
    progress = Progress(progress_stream)
    started = time.monotonic()
    files: list[Path] = []
    rows = bytes_written = 0
    # ISO timestamps in UTC ("2026-01-01 10:00:00+00"): what the CSV reader parses as UTC.
    conn = await connect(database_url, server_settings={"TimeZone": "UTC",
                                                        "DateStyle": "ISO, YMD"})
    sink: Sink | None = None
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for day, day_start, day_end in days(spec.start, spec.end):
                if sink is None:
                    path = (day_path(spec.out, spec.source, day, spec.file_format)
                            if spec.per_day else spec.out)
                    sink = Sink(path, schema, spec.file_format)
                await _copy_day(conn, source, schema, sink, day_start, day_end, spec,
                                lambda r, b, done=(rows, bytes_written): progress.show(
                                    spec.source, done[0] + r, done[1] + b))
                if spec.per_day:
                    sink.close()
                    files.append(sink.path)
                    rows, bytes_written = rows + sink.rows, bytes_written + sink.path.stat(
                        ).st_size
                    log.info("export file", extra={"kv": {
                        "path": sink.path.name, "rows": sink.rows, "day": day.isoformat()}})
                    sink = None
        if sink is None and not spec.per_day:  # an empty window: still a file, with the schema
            sink = Sink(spec.out, schema, spec.file_format)
        if sink is not None:
            sink.close()
            files.append(sink.path)
            rows, bytes_written = rows + sink.rows, bytes_written + sink.path.stat().st_size
            sink = None
    finally:
        if sink is not None:
            sink.abort()
        await conn.close()
    seconds = time.monotonic() - started
    progress.show(spec.source, rows, bytes_written, final=True)
    log.info("export done", extra={"kv": {
        "source": spec.source, "format": spec.file_format, "files": len(files), "rows": rows,
        "bytes": bytes_written, "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds) if seconds else 0}})
    return ExportResult(files, rows, bytes_written, seconds)
