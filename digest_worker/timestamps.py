"""Timestamps as they travel: the stream's values straight to PostgreSQL.

asyncpg's own ``timestamptz`` codec wants a ``datetime`` per value, and building then encoding
two of them per row costs more than the rest of a row's encoding (bench/bench_writer.py).
The worker's connections therefore get a binary ``timestamptz`` codec that takes the stream's
values as they are — float epoch seconds (``ts``) or RFC 3339 text with a UTC
offset (``start_time`` and ``oldest_start_time``); a ``datetime``
is accepted too — and memoises the 8 bytes of each distinct value: a report's rows share one
``ts`` and a process keeps its ``start_time`` from one collection to the next.

Epoch seconds are converted by ``datetime.fromtimestamp(seconds, UTC)`` (round-half-even to
the microsecond) and text by ``datetime.fromisoformat``, whatever the insert method, so the
same sample always gets the same key (the gateway writes microseconds at most, which a float
epoch carries exactly, so both forms give one instant the same key).
"""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta

import asyncpg

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# A process without a known start time (tasklist gives none) gets the epoch as start_time:
# a key column cannot be NULL (migrations/0001 documents the same sentinel).
UNKNOWN_START_TIME = 0.0
MEMO_MAX_ENTRIES = 200_000
_INFINITY_US = 2**63 - 1

_int64 = struct.Struct("!q")
_memo: dict[float | str, bytes] = {}
_memo_get = _memo.get
_MEMOISED_TYPES = (float, int, str)


def to_pg_microseconds(value: float | int | str | datetime | date) -> int:
    """Microseconds since 2000-01-01 UTC (PostgreSQL's binary timestamptz). ``datetime`` and
    ``date`` values are taken exactly as asyncpg's own codec takes them (naive = local time,
    ``datetime.max`` / ``datetime.min`` = ±infinity), so other users of a connection with
    this codec see no difference."""
    if type(value) is float or type(value) is int:
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"timestamp out of range: {value!r}") from exc
    elif type(value) is str:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp is not RFC 3339: {value[:64]!r}") from None
        if moment.tzinfo is None:
            raise ValueError(f"timestamp without a UTC offset: {value[:64]!r}")
    elif isinstance(value, datetime):
        if value == datetime.max:
            return _INFINITY_US
        if value == datetime.min:
            return -_INFINITY_US - 1
        moment = value.astimezone(UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day).astimezone(UTC)
    else:
        raise TypeError(f"timestamp must be epoch seconds or a datetime, got {value!r}")
    delta = moment - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_timestamptz(value: float | int | str | datetime | date) -> bytes:
    """The binary wire form of ``value``, memoised for epoch seconds and text."""
    # .get, not try/except KeyError: a fleet has more start times than the memo holds, so
    # misses are common, and a raised KeyError cost more than the conversion itself.
    encoded = _memo_get(value)
    if encoded is None:
        encoded = _int64.pack(to_pg_microseconds(value))
        if type(value) in _MEMOISED_TYPES:
            if len(_memo) >= MEMO_MAX_ENTRIES:
                _memo.clear()
            _memo[value] = encoded
    return encoded


def decode_timestamptz(data: bytes) -> datetime:
    """An aware UTC ``datetime``, as asyncpg's own codec returns (infinity: naive
    ``datetime.max`` / ``datetime.min``, as asyncpg does)."""
    (microseconds,) = _int64.unpack(data)
    if microseconds == _INFINITY_US:
        return datetime.max
    if microseconds == -_INFINITY_US - 1:
        return datetime.min
    return PG_EPOCH + timedelta(microseconds=microseconds)


async def install_codec(conn: asyncpg.Connection) -> None:
    """Use the epoch-seconds ``timestamptz`` codec on ``conn``."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=encode_timestamptz,
        decoder=decode_timestamptz, format="binary",
    )
