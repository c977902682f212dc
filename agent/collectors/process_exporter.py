"""The process_exporter collector: one ``ProcessGroup`` per ``groupname`` of a scrape.

``await scrape_groups(client, url)`` GETs the exposition and returns an ``ExporterScrape``:
the groups, a ``Snapshot`` (source ``process_exporter``, sha256 of the raw bytes) and the
number of groups dropped. ``parse_groups(text)`` is the pure half, for tests and saved files.

The text is read by prometheus-client's parser; we only pick the ``namedprocess_namegroup_*``
samples we map (the thread, state and wchan families are skipped before parsing: they are half
of a real exposition). Values come as floats (the exporter prints ``1.2345678e+07`` above 1e6);
integer fields must hold an integral value and come out exact. A NaN counts as absent, and so
does an oldest start time <= 0 (0, or Go's zero time for a group with no process left). A group
whose values break the contract (negative, fractional count, out of bounds, or missing
``num_procs`` / cpu / resident memory) is dropped with a warning; the rest still go out.

Errors: anything that prevents a scrape (refused connection, timeout, non-200, oversized or
unreadable body) raises ``ExporterUnavailable``, a ``CollectError`` carrying the URL and the
reason; the caller logs it and still sends the ps data.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from agent.config import DEFAULT_PROCESS_EXPORTER_URL
from agent.contract import MAX_RAW_OUTPUT_CHARS, ProcessGroup, Snapshot, replace_nul
from agent.errors import CollectError

logger = logging.getLogger(__name__)

DEFAULT_URL = DEFAULT_PROCESS_EXPORTER_URL
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# Ask for the classic text format, the one the parser reads (not OpenMetrics / protobuf).
_ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"
_PREFIX = "namedprocess_namegroup_"

# sample name -> (label that selects the field, {label value: field}) or (None, field).
_INT, _FLOAT, _TIME = "int", "float", "time"


def _single(field: str, kind: str) -> tuple[None, dict[str, tuple[str, str]]]:
    """A family with one sample per group (no selecting label)."""
    return None, {"": (field, kind)}


_FIELDS: dict[str, tuple[str | None, dict[str, tuple[str, str]]]] = {
    "num_procs": _single("num_procs", _INT),
    "cpu_seconds_total": (
        "mode",
        {
            "user": ("cpu_user_seconds_total", _FLOAT),
            "system": ("cpu_system_seconds_total", _FLOAT),
        },
    ),
    # process-exporter < 0.5 had one family per mode.
    "cpu_user_seconds_total": _single("cpu_user_seconds_total", _FLOAT),
    "cpu_system_seconds_total": _single("cpu_system_seconds_total", _FLOAT),
    "memory_bytes": (
        "memtype",
        {
            "resident": ("memory_resident_bytes", _INT),
            "virtual": ("memory_virtual_bytes", _INT),
            "swapped": ("memory_swapped_bytes", _INT),
        },
    ),
    "num_threads": _single("num_threads", _INT),
    "open_filedesc": _single("open_fds", _INT),
    "read_bytes_total": _single("read_bytes_total", _INT),
    "write_bytes_total": _single("write_bytes_total", _INT),
    "major_page_faults_total": _single("major_page_faults_total", _INT),
    "minor_page_faults_total": _single("minor_page_faults_total", _INT),
    "context_switches_total": (
        "ctxswitchtype",
        {
            "voluntary": ("context_switches_voluntary_total", _INT),
            "nonvoluntary": ("context_switches_nonvoluntary_total", _INT),
        },
    ),
    "oldest_start_time_seconds": _single("oldest_start_time", _TIME),
}
_WANTED = frozenset(_PREFIX + name for name in _FIELDS)
_SAMPLE_NAME_RE = re.compile(r"[^{\s]+")


@dataclass(frozen=True)
class ExporterScrape:
    """One scrape: the groups kept, the snapshot of the raw text, and how many were dropped.

    ``snapshot.process_count`` is the number of groups kept and ``snapshot.unparsed_lines``
    the number dropped, so the gateway sees a lossy scrape without the raw text.
    """

    groups: list[ProcessGroup]
    snapshot: Snapshot
    dropped_groups: int


class ExporterUnavailable(CollectError):
    """process_exporter could not be scraped (down, slow, non-200, unreadable body)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot scrape process_exporter at {url}: {reason}")


class _BadValue(ValueError):
    pass


async def scrape_groups(
    client: httpx.AsyncClient,
    url: str = DEFAULT_URL,
    *,
    timeout_s: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    keep_raw: bool = False,
) -> ExporterScrape:
    """GET ``url`` and map its ``namedprocess_namegroup_*`` samples to ``ProcessGroup``s.

    ``timeout_s`` bounds the whole request; ``keep_raw`` puts the text in the snapshot (when
    it fits the contract). Raises ``ExporterUnavailable`` (a ``CollectError``).
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            body = await _fetch(client, url, timeout_s, max_body_bytes)
    except TimeoutError as exc:
        raise ExporterUnavailable(url, f"no complete answer within {timeout_s:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ExporterUnavailable(url, f"{type(exc).__name__}: {exc}") from exc
    # The contract refuses a NUL (PostgreSQL text cannot hold one): replace it here.
    text = replace_nul(body.decode("utf-8", errors="replace"))
    try:
        groups, dropped = parse_groups(text)
    except ValueError as exc:
        raise ExporterUnavailable(url, f"unreadable exposition: {exc}") from exc
    raw = text if keep_raw and len(text) <= MAX_RAW_OUTPUT_CHARS else None
    snapshot = Snapshot(
        source="process_exporter",
        sha256=hashlib.sha256(body).hexdigest(),
        process_count=len(groups),
        unparsed_lines=dropped,
        raw_output=raw,
    )
    logger.debug(
        "process_exporter scraped",
        extra={
            "kv": {
                "url": url,
                "groups": len(groups),
                "dropped": dropped,
                "bytes": len(body),
                "scrape_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )
    return ExporterScrape(groups=groups, snapshot=snapshot, dropped_groups=dropped)


async def _fetch(client: httpx.AsyncClient, url: str, timeout_s: float, max_bytes: int) -> bytes:
    async with client.stream(
        "GET", url, headers={"Accept": _ACCEPT}, timeout=timeout_s
    ) as response:
        if response.status_code != 200:
            raise ExporterUnavailable(url, f"HTTP {response.status_code}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ExporterUnavailable(url, f"body larger than {max_bytes} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def parse_groups(text: str) -> tuple[list[ProcessGroup], int]:
    """Map an exposition text to groups; returns ``(groups, dropped_group_count)``.

    Raises ``ValueError`` when prometheus-client cannot parse the (kept) text at all.
    """
    values: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(_wanted_lines(text)):
        for sample in family.samples:
            name = sample.labels.get("groupname")
            spec = _FIELDS.get(sample.name[len(_PREFIX) :])
            if name is None or spec is None:
                continue
            selector, fields = spec
            target = fields.get(sample.labels.get(selector, "") if selector else "")
            if target is not None:
                values.setdefault(name, {})[target[0]] = (sample.value, target[1])
    groups: list[ProcessGroup] = []
    dropped = 0
    for name, fields in values.items():
        group = _build_group(name, fields)
        if group is None:
            dropped += 1
        else:
            groups.append(group)
    return groups, dropped


def _wanted_lines(text: str) -> str:
    # Only whole sample lines of the families we map; HELP/TYPE lines are not needed because
    # we match on sample names. A sample never spans lines (newlines in labels are escaped).
    kept = []
    for line in text.splitlines():
        line = line.lstrip(" \t")
        if line.startswith(_PREFIX):
            name = _SAMPLE_NAME_RE.match(line)
            if name is not None and name.group() in _WANTED:
                kept.append(line)
    return "\n".join(kept) + "\n"


def _build_group(name: str, fields: dict[str, tuple[float, str]]) -> ProcessGroup | None:
    data: dict[str, Any] = {"name": name}
    try:
        for field_name, (value, kind) in fields.items():
            converted = _convert(field_name, value, kind)
            if converted is not None:
                data[field_name] = converted
        return ProcessGroup(**data)
    except _BadValue as exc:
        reason = str(exc)
    except ValidationError as exc:
        reason = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()
        )
    logger.warning(
        "process_exporter group dropped", extra={"kv": {"group": name[:300], "reason": reason}}
    )
    return None


def _convert(field_name: str, value: float, kind: str) -> int | float | datetime | None:
    if isinstance(value, float) and math.isnan(value):
        return None  # an exporter's "no value"; a required field then fails validation
    if kind == _FLOAT:
        return float(value)
    if kind == _TIME:
        # A group whose processes all exited stays in the exposition with num_procs 0 and
        # Go's zero time (-62135596800, year 1) as its oldest start; 0 means unknown too.
        if value <= 0:
            return None
        if value >= 1e11:  # after year 5138: garbage, not a start time
            raise _BadValue(f"{field_name}={value!r}: not a timestamp")
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, float):
        if not value.is_integer():  # also rejects +/-Inf
            raise _BadValue(f"{field_name}={value!r}: not an integer")
        return int(value)
    return value
