"""The stream contract: Redis keys, sharding and message encoding.

This module is the only place that knows how samples travel from the gateway to the digest
workers. The gateway encodes with it, the workers decode with it (it is the one module of
``ingest_gateway`` that ``digest_worker`` may import), so it depends on nothing but orjson and
the error root.

A message is one stream entry with one field, ``m``: an orjson array
``[SCHEMA_VERSION, kind, *columns]`` whose columns follow ``COLUMNS[kind]``. Kinds: ``p`` one
OS process sample, ``g`` one process_exporter group sample, ``h`` host metadata (one per
report), ``s`` snapshot metadata (one per raw output).

Why this shape: one message per process is the product's shape, so every byte and every field
of an entry is paid for per process. A positional array is one ``orjson.dumps`` per sample, and
one field instead of two (version, data) costs Valkey with AOF ~13 % less CPU per ``XADD`` and
~8 % less per entry over its whole life (bench/bench_stream_entry.py).

Timestamps: ``ts`` (the collection time, shared by a report's rows) is float epoch seconds,
which the worker compares; every other timestamp (``start_time``, ``oldest_start_time``) is
the RFC 3339 text orjson writes for the validated datetime (a Python conversion per row cost
the gateway more than encoding the rest of the row).

Streams are sharded by a stable hash of ``server_id`` so one host's samples stay in order on
one stream; the shard number is a Redis Cluster hash tag (``{3}``), so a stream, its
dead-letter stream and nothing else share a slot.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Final

import orjson

from agent.errors import ProcfleetError

SCHEMA_VERSION: Final = 2

KEY_PREFIX: Final = "procfleet:"
GROUP: Final = "digest"
DEFAULT_SHARDS: Final = 4
MAX_SHARDS: Final = 1024

FIELD_MESSAGE: Final = b"m"

KIND_PROCESS: Final = "p"
KIND_GROUP: Final = "g"
KIND_HOST: Final = "h"
KIND_SNAPSHOT: Final = "s"

# Column order of each kind. Changing an order or meaning needs a new SCHEMA_VERSION.
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    KIND_PROCESS: (
        "server_id", "ts", "pid", "start_time", "ppid", "user", "name", "command", "state",
        "cpu_seconds_total", "cpu_percent", "memory_percent", "rss_bytes", "vsz_bytes", "tty",
        "session_name", "session_id",
    ),
    KIND_GROUP: (
        "server_id", "ts", "name", "num_procs", "cpu_user_seconds_total",
        "cpu_system_seconds_total", "memory_resident_bytes", "memory_virtual_bytes",
        "memory_swapped_bytes", "num_threads", "open_fds", "read_bytes_total",
        "write_bytes_total", "major_page_faults_total", "minor_page_faults_total",
        "context_switches_voluntary_total", "context_switches_nonvoluntary_total",
        "oldest_start_time",
    ),
    KIND_HOST: (
        "server_id", "ts", "report_id", "hostname", "os_type", "os_version", "boot_id",
        "agent_version",
    ),
    KIND_SNAPSHOT: (
        "server_id", "ts", "source", "sha256", "process_count", "unparsed_lines", "raw_output",
    ),
}


class StreamDecodeError(ProcfleetError):
    """An entry that is not a message of this schema (it goes to the dead-letter stream)."""


def sample_stream(shard: int) -> str:
    """The stream of shard ``shard``: ``procfleet:samples:{3}``."""
    return f"{KEY_PREFIX}samples:{{{shard}}}"


def dead_letter_stream(shard: int) -> str:
    """Where poison entries of shard ``shard`` go, with their reason and original id."""
    return f"{KEY_PREFIX}dead:{{{shard}}}"


def report_seen_key(report_id: str) -> str:
    """Set (with a TTL) once every message of a report is in Redis; the gateway's dedupe."""
    return f"{KEY_PREFIX}report:{report_id}"


TOKENS_KEY: Final = f"{KEY_PREFIX}tokens"
# Bumped (INCR) after every change of TOKENS_KEY: a gateway re-reads the tokens only when it moved.
TOKENS_VERSION_KEY: Final = f"{KEY_PREFIX}tokens:version"
# Hash server_id -> id of the one host token enrolled for it (ingest_gateway/enrollment.py).
HOSTS_KEY: Final = f"{KEY_PREFIX}hosts"
SHARDS_KEY: Final = f"{KEY_PREFIX}shards"
# Written by the gateway only: the write its group-commit WAITAOF waits on (workers ignore it).
AOF_BARRIER_KEY: Final = f"{KEY_PREFIX}aof_barrier"


def shard_for(server_id: str, shards: int) -> int:
    """Stable shard of a host: crc32 is the same in every process and every release."""
    return zlib.crc32(server_id.encode()) % shards


def encode(kind: str, row: tuple[Any, ...]) -> dict[bytes, bytes]:
    """The fields of one stream entry. ``row`` follows ``COLUMNS[kind]``."""
    return {FIELD_MESSAGE: encode_data(kind, row)}


def encode_data(kind: str, row: tuple[Any, ...]) -> bytes:
    """The ``m`` field alone, for callers that frame ``XADD`` themselves. ``ts`` must be
    epoch seconds; other datetimes in ``row`` become RFC 3339 text."""
    return orjson.dumps((SCHEMA_VERSION, kind, *row))


def row_encoder(kind: str, *head: Any) -> Callable[[tuple[Any, ...]], bytes]:
    """A fast ``encode_data`` for many rows of one kind that share their leading columns.

    ``row_encoder("p", server_id, ts)(rest)`` returns the bytes of
    ``encode_data("p", (server_id, ts, *rest))``: the shared prefix is encoded once and only
    ``rest`` per row, which is what makes one message per process affordable."""
    prefix = orjson.dumps((SCHEMA_VERSION, kind, *head))[:-1] + b","
    dumps = orjson.dumps

    def encode_rest(rest: tuple[Any, ...]) -> bytes:
        # "[a,b]"[1:] is "a,b]": spliced after "[version,kind,head...," it closes the array.
        if not rest:
            return prefix[:-1] + b"]"
        return prefix + dumps(rest)[1:]

    return encode_rest


_ROW_LENGTH = {kind: len(columns) for kind, columns in COLUMNS.items()}


def decode(fields: list[bytes] | dict[bytes, bytes]) -> tuple[str, list[Any]]:
    """``(kind, row)`` of a stream entry, or ``StreamDecodeError`` naming what is wrong.
    ``fields`` is the flat field/value list Redis sends, or a mapping of it."""
    if type(fields) is list and len(fields) == 2 and fields[0] == FIELD_MESSAGE:
        payload = fields[1]  # the usual entry: skip the generic field walk
    else:
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=False))
        if FIELD_MESSAGE not in fields:
            raise StreamDecodeError(f"no field {FIELD_MESSAGE!r}: not a procfleet message")
        payload = fields[FIELD_MESSAGE]
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise StreamDecodeError(f"unreadable payload: {exc}") from None
    if type(data) is not list or len(data) < 2 or data[0] != SCHEMA_VERSION:
        raise StreamDecodeError(f"not a schema {SCHEMA_VERSION} message: {str(data)[:80]!r}")
    kind = data[1]
    if _ROW_LENGTH.get(kind) != len(data) - 2:
        raise StreamDecodeError(_wrong_shape(kind, len(data) - 2))
    return kind, data[2:]


def _wrong_shape(kind: Any, columns: int) -> str:
    if kind not in COLUMNS:
        return f"unknown message kind {str(kind)[:20]!r}"
    return f"kind {kind!r} has {columns} columns, expected {len(COLUMNS[kind])}"
