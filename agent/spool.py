"""A bounded on-disk spool of reports the gateway could not take yet.

Each report is one file ``<ns-timestamp>-<report_id>.json.gz`` holding the exact gzip body that
was (or will be) sent, so a replay sends the same bytes with the same ``report_id``. Names sort
oldest-first. Files are written atomically (temp file, fsync, rename, fsync of the directory), so
a crash leaves either a whole report or a temp file that the next start removes. The spool is
bounded by ``max_bytes``: when it is over, the oldest reports are dropped with a warning and a
counter. A file that is not valid gzip (disk trouble, a hand edit) is deleted with a warning
when it is read, never replayed and never a crash.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from agent.errors import ProcfleetError

log = logging.getLogger(__name__)

SUFFIX = ".json.gz"
TEMP_PREFIX = ".tmp-"
_NAME_RE = re.compile(r"^(\d{20})-([A-Za-z0-9_-]{8,64})\.json\.gz$")

# The agent's one "dropped" counter; the runner adds the reason spool_error.
REPORTS_DROPPED = Counter(
    "procfleet_agent_reports_dropped_total",
    "Reports dropped unsent, by reason",
    ["reason"],  # spool_full | spool_corrupt | spool_error
)
SPOOL_REPORTS = Gauge("procfleet_agent_spool_reports", "Reports waiting in the spool")
SPOOL_BYTES = Gauge("procfleet_agent_spool_bytes", "Bytes of reports waiting in the spool")


def spooled_files(directory: str | Path) -> list[Path]:
    """The files of the reports spooled in ``directory``, oldest first: what the agent will
    replay. A report still being written (its temp file) is not one yet. Reads only."""
    return sorted(path for path in Path(directory).iterdir()
                  if _NAME_RE.match(path.name) and path.is_file())


class SpoolError(ProcfleetError):
    """The spool directory cannot be used (not writable, not a directory)."""


@dataclass(frozen=True, order=True)
class SpoolEntry:
    """One spooled report. Entries order oldest-first."""

    name: str
    report_id: str
    size_bytes: int


class Spool:
    """Bounded, restart-safe store of gzip report bodies, replayed oldest-first."""

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._clock_ns = clock_ns
        self._last_ns = 0
        self._entries: dict[str, SpoolEntry] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {str(directory)!r}: {exc}") from exc
        self._load()

    # --- reading the directory --------------------------------------------------------------

    def _load(self) -> None:
        """Index what a previous run left; remove its half-written temp files."""
        for item in os.scandir(self.directory):
            if item.name.startswith(TEMP_PREFIX):
                # Only a crash mid-write leaves one; the report it held was never acknowledged
                # as spooled, so removing it loses nothing that was promised.
                _unlink(Path(item.path))
                continue
            match = _NAME_RE.match(item.name)
            if not match or not item.is_file():
                continue  # not ours: leave it alone
            self._entries[item.name] = SpoolEntry(item.name, match[2], item.stat().st_size)
            self._last_ns = max(self._last_ns, int(match[1]))
        self._update_gauges()
        if self._entries:
            log.info(
                "spool loaded",
                extra={"kv": {"reports": len(self), "bytes": self.total_bytes,
                              "dir": str(self.directory)}},
            )

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SpoolEntry]:
        """Entries oldest-first (a snapshot: removing while iterating is fine)."""
        return iter(sorted(self._entries.values()))

    @property
    def total_bytes(self) -> int:
        return sum(e.size_bytes for e in self._entries.values())

    def oldest(self) -> SpoolEntry | None:
        return min(self._entries.values(), default=None)

    # --- writing ------------------------------------------------------------------------------

    def put(self, report_id: str, body: bytes) -> SpoolEntry | None:
        """Store one gzip body atomically, then enforce the size cap (oldest dropped first).
        Returns the entry, or None when the body alone is larger than the whole spool."""
        if len(body) > self.max_bytes:
            REPORTS_DROPPED.labels("spool_full").inc()
            log.warning(
                "report larger than the spool dropped",
                extra={"kv": {"report_id": report_id, "bytes": len(body),
                              "max_bytes": self.max_bytes}},
            )
            return None
        # Strictly increasing stamps keep the order even when the clock stalls or steps back.
        stamp = max(self._clock_ns(), self._last_ns + 1)
        self._last_ns = stamp
        name = f"{stamp:020d}-{report_id}{SUFFIX}"
        final = self.directory / name
        temp = self.directory / f"{TEMP_PREFIX}{name}"
        try:
            with open(temp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
            _fsync_dir(self.directory)
        except OSError as exc:
            _unlink(temp)
            raise SpoolError(f"cannot write {str(final)!r}: {exc}") from exc
        entry = SpoolEntry(name, report_id, len(body))
        self._entries[name] = entry
        self._enforce_cap()
        self._update_gauges()
        return entry if name in self._entries else None

    def _enforce_cap(self) -> None:
        total = self.total_bytes
        for entry in sorted(self._entries.values()):
            if total <= self.max_bytes:
                break
            self._discard(entry)
            total -= entry.size_bytes
            REPORTS_DROPPED.labels("spool_full").inc()
            log.warning(
                "spool full: oldest report dropped",
                extra={"kv": {"report_id": entry.report_id, "bytes": entry.size_bytes,
                              "max_bytes": self.max_bytes}},
            )

    def read(self, entry: SpoolEntry) -> bytes | None:
        """The gzip body of ``entry``, or None if it is gone or corrupted (then it is removed)."""
        path = self.directory / entry.name
        try:
            body = path.read_bytes()
            gzip.decompress(body)  # checks the CRC: never replay a damaged report
        except FileNotFoundError:
            self._entries.pop(entry.name, None)
            self._update_gauges()
            return None
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            REPORTS_DROPPED.labels("spool_corrupt").inc()
            log.warning(
                "corrupted spool file deleted",
                extra={"kv": {"file": entry.name, "error": str(exc)}},
            )
            self.remove(entry)
            return None
        return body

    def remove(self, entry: SpoolEntry) -> None:
        """Delete a spooled report (after the gateway took it)."""
        self._discard(entry)
        self._update_gauges()

    def _discard(self, entry: SpoolEntry) -> None:
        self._entries.pop(entry.name, None)
        _unlink(self.directory / entry.name)

    def _update_gauges(self) -> None:
        SPOOL_REPORTS.set(len(self._entries))
        SPOOL_BYTES.set(self.total_bytes)


def check_writable(directory: str | Path) -> None:
    """Raise ``SpoolError`` unless ``directory`` can be created and written (for --check)."""
    path = Path(directory)
    probe = path / f"{TEMP_PREFIX}check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise SpoolError(f"spool directory {str(path)!r} is not writable: {exc}") from exc


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
