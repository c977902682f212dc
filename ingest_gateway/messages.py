"""The stream messages of one validated report: ``d`` payloads in ``stream.COLUMNS`` order.

Order within a report: one ``h`` (host metadata, carries the report_id), one ``s`` per
snapshot, one ``g`` per process_exporter group, one ``p`` per OS process. Every column after
``server_id, ts`` is read from the model field of the same name, so a column added to the
stream contract only needs the model to have it.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter, itemgetter

from agent.contract import Report
from ingest_gateway import stream

_HEAD = ("server_id", "ts")
for _kind, _columns in stream.COLUMNS.items():
    if _columns[:2] != _HEAD:  # the fast encoders below share exactly this prefix
        raise ImportError(f"stream kind {_kind!r} must start with {_HEAD}, has {_columns[:2]}")

# Read from the model's __dict__ (pydantic keeps every field there): itemgetter on a dict is a
# third cheaper than attrgetter on the model, and this runs once per process.
_PROCESS_COLUMNS = itemgetter(*stream.COLUMNS[stream.KIND_PROCESS][2:])
_GROUP_COLUMNS = itemgetter(*stream.COLUMNS[stream.KIND_GROUP][2:])
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


def report_messages(report: Report, *, shards: int, max_raw_output_bytes: int) -> ReportMessages:
    """Encode a report into its stream messages (``ts`` as epoch seconds, see ``stream``)."""
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
        payloads += [encode_group(_GROUP_COLUMNS(g.__dict__)) for g in report.process_groups]
    if report.processes:
        encode_process = stream.row_encoder(stream.KIND_PROCESS, server_id, ts)
        payloads += [encode_process(_PROCESS_COLUMNS(p.__dict__)) for p in report.processes]
    return ReportMessages(
        report_id=report.report_id,
        shard=stream.shard_for(server_id, shards),
        payloads=payloads,
        processes=len(report.processes),
        groups=len(report.process_groups),
    )
