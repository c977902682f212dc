"""The stream contract: Redis keys, sharding and message encoding.

This module is the only place that knows how samples travel from the gateway to the digest
workers. The gateway encodes with it, the workers decode with it (it is the one module of
``ingest_gateway`` that ``digest_worker`` may import), so it depends on nothing but orjson.

A message is one stream entry with two fields:

    v  schema version (``SCHEMA_VERSION``)
    d  an orjson array ``[kind, *columns]`` whose columns follow ``COLUMNS[kind]``

Positional arrays keep entries small and make encoding one ``orjson.dumps`` call per sample.
Kinds: ``p`` one OS process sample, ``g`` one process_exporter group sample, ``h`` host
metadata (one per report), ``s`` snapshot metadata (one per raw output).

Timestamps travel as float seconds since the epoch (UTC).

Streams are sharded by a stable hash of ``server_id`` so one host's samples stay in order on
one stream; the shard number is a Redis Cluster hash tag (``{3}``), so a stream, its
dead-letter stream and nothing else share a slot.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import orjson

SCHEMA_VERSION: Final = b"1"

KEY_PREFIX: Final = "procfleet:"
GROUP: Final = "digest"
DEFAULT_SHARDS: Final = 4
MAX_SHARDS: Final = 1024

FIELD_VERSION: Final = b"v"
FIELD_DATA: Final = b"d"

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


class StreamDecodeError(ValueError):
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
SHARDS_KEY: Final = f"{KEY_PREFIX}shards"
# Written by the gateway only: the write its group-commit WAITAOF waits on (workers ignore it).
AOF_BARRIER_KEY: Final = f"{KEY_PREFIX}aof_barrier"


def shard_for(server_id: str, shards: int) -> int:
    """Stable shard of a host: crc32 is the same in every process and every release."""
    return zlib.crc32(server_id.encode()) % shards


def encode(kind: str, row: tuple[Any, ...]) -> dict[bytes, bytes]:
    """The fields of one stream entry. ``row`` follows ``COLUMNS[kind]``."""
    return {FIELD_VERSION: SCHEMA_VERSION, FIELD_DATA: orjson.dumps([kind, *row])}


def _epoch_seconds(value: object) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"cannot encode {type(value).__name__} in a stream message")


_DATETIME_AS_EPOCH = {"default": _epoch_seconds, "option": orjson.OPT_PASSTHROUGH_DATETIME}


def encode_data(kind: str, row: tuple[Any, ...]) -> bytes:
    """The ``d`` field alone, for callers that frame ``XADD`` themselves (they send
    ``FIELD_VERSION`` = ``SCHEMA_VERSION`` and ``FIELD_DATA`` = this). Aware datetimes in
    ``row`` become float epoch seconds; otherwise the same bytes as ``encode``."""
    return orjson.dumps((kind, *row), **_DATETIME_AS_EPOCH)


def row_encoder(kind: str, *head: Any) -> Callable[[tuple[Any, ...]], bytes]:
    """A fast ``encode_data`` for many rows of one kind that share their leading columns.

    ``row_encoder("p", server_id, ts)(rest)`` returns the bytes of
    ``encode_data("p", (server_id, ts, *rest))``: the shared prefix is encoded once and only
    ``rest`` per row, which is what makes one message per process affordable."""
    prefix = orjson.dumps((kind, *head), **_DATETIME_AS_EPOCH)[:-1] + b","
    dumps = orjson.dumps
    default, option = _epoch_seconds, orjson.OPT_PASSTHROUGH_DATETIME

    def encode_rest(rest: tuple[Any, ...]) -> bytes:
        # "[a,b]"[1:] is "a,b]": spliced after "[kind,head...," it closes the same array.
        if not rest:
            return prefix[:-1] + b"]"
        return prefix + dumps(rest, default=default, option=option)[1:]

    return encode_rest


def decode(fields: dict[bytes, bytes]) -> tuple[str, tuple[Any, ...]]:
    """``(kind, row)`` of a stream entry, or ``StreamDecodeError`` naming what is wrong."""
    version = fields.get(FIELD_VERSION)
    if version != SCHEMA_VERSION:
        raise StreamDecodeError(f"unsupported schema version {version!r}")
    try:
        data = orjson.loads(fields[FIELD_DATA])
    except (KeyError, orjson.JSONDecodeError) as exc:
        raise StreamDecodeError(f"unreadable payload: {exc}") from exc
    if not isinstance(data, list) or not data or data[0] not in COLUMNS:
        raise StreamDecodeError(f"unknown message kind in {str(data)[:80]!r}")
    kind, row = data[0], tuple(data[1:])
    if len(row) != len(COLUMNS[kind]):
        raise StreamDecodeError(
            f"kind {kind!r} has {len(row)} columns, expected {len(COLUMNS[kind])}"
        )
    return kind, row
