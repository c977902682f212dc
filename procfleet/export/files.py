"""Output files: a Parquet or CSV sink over pyarrow, one file per export or per UTC day.

A file is written under a temporary name and renamed into place when complete, so a failed
or interrupted export never leaves a truncated file where a loader would pick it up. Parquet
keeps the types of the source's Arrow schema (timestamps as UTC microseconds, integers,
doubles, strings). CSV is a header row of the column names, then PostgreSQL's own
``COPY … (FORMAT csv)`` output, written as it arrives: timestamps ISO 8601 in UTC
(``2026-01-01 10:00:00.5+00``), NULL an empty field, an empty string ``""``, shortest
exact decimals for doubles (twice the rows/s of re-encoding it through Arrow).
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from procfleet.export.sources import FLOAT64, INT32, INT64, TEXT, TS, Column

FORMATS = ("parquet", "csv")
EXTENSIONS = {"parquet": ".parquet", "csv": ".csv"}
PARQUET_COMPRESSION = "zstd"
_ARROW_TYPES = {TEXT: pa.string(), TS: pa.timestamp("us", tz="UTC"), INT64: pa.int64(),
                INT32: pa.int32(), FLOAT64: pa.float64()}


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    """The schema of a source's files; each field's unit is in its metadata."""
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.kind], nullable=True,
                               metadata={"unit": c.unit} if c.unit else None)
                      for c in columns])


def day_path(directory: Path, source: str, day: date, file_format: str) -> Path:
    """``<dir>/<source>-YYYY-MM-DD.<ext>`` (``--per-day``)."""
    return directory / f"{source}-{day.isoformat()}{EXTENSIONS[file_format]}"


class Sink:
    """One output file: ``write`` record batches, then ``close`` (renames into place) or
    ``abort`` (removes the partial file)."""

    def __init__(self, path: Path, schema: pa.Schema, file_format: str) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.file_format = file_format
        self.rows = 0
        self._csv: Any = None
        self._parquet: Any = None
        if file_format == "parquet":
            self._parquet = pq.ParquetWriter(self.partial, schema,
                                             compression=PARQUET_COMPRESSION)
        else:
            self._csv = open(self.partial, "wb")  # noqa: SIM115 - closed by close / abort
            self._csv.write((",".join(schema.names) + "\n").encode())

    def write(self, table: pa.Table) -> None:
        """One Parquet row group per call."""
        self._parquet.write_table(table)
        self.rows += table.num_rows

    def write_csv(self, chunk: bytes) -> None:
        """PostgreSQL's CSV as it comes (rows are counted by ``add_rows``)."""
        self._csv.write(chunk)

    def add_rows(self, rows: int) -> None:
        self.rows += rows

    @property
    def bytes_written(self) -> int:
        if self._csv is not None:
            return self._csv.tell()
        try:
            return self.partial.stat().st_size
        except OSError:
            return 0

    def _close_writer(self) -> None:
        (self._parquet or self._csv).close()

    def close(self) -> None:
        self._close_writer()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        try:
            self._close_writer()
        finally:
            self.partial.unlink(missing_ok=True)
