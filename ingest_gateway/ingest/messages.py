"""The stream messages of one validated report: ``m`` payloads in ``stream.COLUMNS`` order.

Order within a report: one ``h`` (host metadata, carries the report_id), one ``s`` per
snapshot, one ``g`` per process_exporter group, one ``p`` per OS process. Every column after
``server_id, ts`` is read from the field of the same name, so a column added to the stream
contract only needs the contract to have it. A report is either pydantic models
(``agent.contract``) or the Structs of the gateway's fast path (``fast_contract``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

from msgspec.structs import astuple
from pydantic import BaseModel

from agent.contract import ProcessGroup, ProcessSample, Report
from ingest_gateway import stream
from ingest_gateway.ingest.fast_contract import STRUCT_OF

_HEAD = ("server_id", "ts")
for _kind, _columns in stream.COLUMNS.items():
    if _columns[:2] != _HEAD:  # the fast encoders below share exactly this prefix
        raise ImportError(f"stream kind {_kind!r} must start with {_HEAD}, has {_columns[:2]}")


@dataclass(frozen=True)
class _RowReaders:
    """Read the columns after ``server_id, ts`` of a process and of a group, as tuples in
    stream order. This runs once per process, so it reads by position: pydantic keeps every
    field in ``__dict__`` (itemgetter on it is a third cheaper than attrgetter), and
    ``astuple`` lists a fast-path Struct's fields in declaration order."""

    process: Callable[[Any], tuple]
    group: Callable[[Any], tuple]

    @classmethod
    def for_models(cls) -> _RowReaders:
        process, group = (itemgetter(*stream.COLUMNS[kind][2:]) for kind in "pg")
        return cls(lambda m: process(m.__dict__), lambda m: group(m.__dict__))

    @classmethod
    def for_structs(cls) -> _RowReaders:
        process, group = (
            itemgetter(*(STRUCT_OF[model].__struct_fields__.index(column)
                         for column in stream.COLUMNS[kind][2:]))
            for kind, model in (("p", ProcessSample), ("g", ProcessGroup)))
        return cls(lambda s: process(astuple(s)), lambda s: group(astuple(s)))


_MODEL_ROWS, _STRUCT_ROWS = _RowReaders.for_models(), _RowReaders.for_structs()
_HOST_COLUMNS = attrgetter(*stream.COLUMNS[stream.KIND_HOST][3:])  # after report_id
_SNAPSHOT_COLUMNS = stream.COLUMNS[stream.KIND_SNAPSHOT][2:]


@dataclass(frozen=True)
class ReportMessages:
    """Everything the enqueue path sends for one report."""

    report_id: str
    shard: int
    payloads: list[bytes]
    processes: int
    groups: int

    @property
    def payload_bytes(self) -> int:
        return sum(map(len, self.payloads))


def cap_utf8(text: str | None, max_bytes: int) -> str | None:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    if text is None or len(text) * 4 <= max_bytes:
        return text
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def report_messages(report: Report | Any, *, shards: int,
                    max_raw_output_bytes: int) -> ReportMessages:
    """Encode a report (models or fast-path Structs) into its stream messages (``ts`` as epoch
    seconds, see ``stream``)."""
    rows = _MODEL_ROWS if isinstance(report, BaseModel) else _STRUCT_ROWS
    host = report.host
    server_id, ts = host.server_id, report.collected_at.timestamp()
    payloads = [
        stream.encode_data(stream.KIND_HOST, (server_id, ts, report.report_id,
                                              *_HOST_COLUMNS(host)))
    ]
    for snapshot in report.snapshots:
        values = {name: getattr(snapshot, name) for name in _SNAPSHOT_COLUMNS}
        values["raw_output"] = cap_utf8(snapshot.raw_output, max_raw_output_bytes)
        payloads.append(stream.encode_data(stream.KIND_SNAPSHOT, (server_id, ts,
                                                                  *values.values())))
    if report.process_groups:
        encode_group = stream.row_encoder(stream.KIND_GROUP, server_id, ts)
        payloads += [encode_group(rows.group(g)) for g in report.process_groups]
    if report.processes:
        encode_process = stream.row_encoder(stream.KIND_PROCESS, server_id, ts)
        payloads += [encode_process(rows.process(p)) for p in report.processes]
    return ReportMessages(
        report_id=report.report_id,
        shard=stream.shard_for(server_id, shards),
        payloads=payloads,
        processes=len(report.processes),
        groups=len(report.process_groups),
    )
