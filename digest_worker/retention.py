"""Retention per tier: day partitions dropped by tier, identities expired with their history.

The tiers (settings in digest_worker/settings.py; README "Retention and disk" has the disk
each costs):

- **Per-process history**, ``PROCFLEET_RETENTION_DAYS`` (14): the hot rows (emptied by the
  compaction after ``PROCFLEET_HOT_WINDOW_H``, their day partitions kept for late rows), the
  compacted history and its clocks, the group samples and history, the snapshots (raw
  collector output, kept to reprocess the samples: useless once the samples are gone) and
  the identities (below). The gateway refuses samples older than this.
- **Minute rollups**, ``PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS`` (30): ``rollup_minute``,
  ``rollup_fleet_minute``.
- **Hour rollups**, ``PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS`` (400): ``rollup_hour``,
  ``rollup_fleet_hour``.

The tiers nest (each at least the one before): a late sample recomputes its minute cells and
the hour from them. Partitions are dropped whole (``partitions.run_upkeep``); for the rollup
tiers new partitions are only created as far back as samples are kept, since nothing older
can arrive (400 empty days of ``rollup_hour`` would only cost catalog and planning time).

**Identities expire** with the per-process history: a process or group whose ``last_seen``
is before the tier's cutoff (the first day kept, 00:00 UTC) and that has no hot row and no
history row left is deleted, in batches of ``BATCH`` keys, each its own short transaction:

1. ``SELECT … FOR UPDATE SKIP LOCKED`` the batch's candidates: an identity a writer is
   upserting right now (a replayed sample) is skipped, and once locked, a writer's upsert of
   it waits for this transaction.
2. ``DELETE`` those still without points or history, in a new statement, hence a new
   snapshot taken after the locks: a writer that upserted the identity and wrote its points
   before step 1 has committed them, and they are seen.

A writer that waits in step 2's shadow inserts the identity afresh once the deletion commits
(``ON CONFLICT`` finds no row): a sample replayed after its identity expired lands again,
with its identity. Writers trust their memory of a written identity only for
``identity.TRUST_S`` (12 h), far less than the shortest retention (1 day): an identity old
enough to expire is always upserted again with its samples, never assumed present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from digest_worker import partitions

log = logging.getLogger(__name__)

DEFAULT_HISTORY_DAYS = 14
DEFAULT_MINUTE_DAYS = 30
DEFAULT_HOUR_DAYS = 400
HISTORY_TABLES = partitions.DAILY_TABLES
MINUTE_TABLES = ("rollup_minute", "rollup_fleet_minute")
HOUR_TABLES = ("rollup_hour", "rollup_fleet_hour")
ROLLUP_TABLES = MINUTE_TABLES + HOUR_TABLES
# identities, and the tables whose rows keep one alive (hot rows, compacted history)
IDENTITY_TABLES = (("process_identities", "process_points", "process_history"),
                   ("process_groups", "process_group_points", "process_group_history"))
BATCH = 1000
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class Retention:
    """Days kept per tier; a rollup tier left None keeps at least as long as the one below
    it (its default, or longer)."""

    history_days: int = DEFAULT_HISTORY_DAYS
    minute_days: int | None = None
    hour_days: int | None = None

    def __post_init__(self) -> None:
        minute = self.minute_days or max(DEFAULT_MINUTE_DAYS, self.history_days)
        object.__setattr__(self, "minute_days", minute)
        object.__setattr__(self, "hour_days", self.hour_days or max(DEFAULT_HOUR_DAYS, minute))
        if not self.history_days <= self.minute_days <= self.hour_days:  # type: ignore[operator]
            raise ValueError(f"retention tiers must nest (history <= minute <= hour days), "
                             f"got {self!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> Retention:
        return cls(settings.retention_days, settings.rollup_minute_retention_days,
                   settings.rollup_hour_retention_days)

    def tiers(self, tables: tuple[str, ...] | None = None
              ) -> list[tuple[tuple[str, ...], int]]:
        """(tables, days kept) per tier, restricted to ``tables`` when given."""
        out = []
        for group, days in ((HISTORY_TABLES, self.history_days),
                            (MINUTE_TABLES, self.minute_days),
                            (HOUR_TABLES, self.hour_days)):
            chosen = tuple(t for t in group if tables is None or t in tables)
            if chosen:
                out.append((chosen, int(days)))  # type: ignore[arg-type]
        return out

    def history_cutoff(self, today: date) -> datetime:
        """The first moment the per-process history keeps (00:00 UTC of its first day)."""
        first = today - timedelta(days=self.history_days)
        return datetime(first.year, first.month, first.day, tzinfo=UTC)


@dataclass
class RetentionReport:
    """What one retention run removed."""

    ran: bool = True
    dropped: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    expired_identities: int = 0
    expired_groups: int = 0
    forgotten_names: int = 0
    forgotten_texts: int = 0

    def as_kv(self) -> dict[str, Any]:
        return {"dropped_partitions": len(self.dropped), "expired_identities":
                self.expired_identities, "expired_groups": self.expired_groups,
                "forgotten_names": self.forgotten_names,
                "forgotten_texts": self.forgotten_texts}


async def partition_upkeep(conn: asyncpg.Connection, today: date, retention: Retention,
                           ahead_days: int, tables: tuple[str, ...] | None = None
                           ) -> partitions.UpkeepReport:
    """``partitions.run_upkeep`` of every tier (or of ``tables``) with its own retention.
    ``ran`` is False if another worker held the upkeep lock for any tier."""
    total = partitions.UpkeepReport()
    for group, days in retention.tiers(tables):
        report = await partitions.run_upkeep(
            conn, today, days, ahead_days, tables=group,
            create_back_days=min(days, retention.history_days))
        total.ran = total.ran and report.ran
        total.created += report.created
        total.dropped += report.dropped
        total.moved_rows += report.moved_rows
        total.expired_default_rows += report.expired_default_rows
        total.future_default_rows += report.future_default_rows
    return total


async def expire_identities(conn: asyncpg.Connection, cutoff: datetime,
                            batch: int = BATCH) -> tuple[int, int]:
    """Delete the identities and groups last seen before ``cutoff`` that have no point and
    no history row left (see the module docstring). Returns (identities, groups) deleted."""
    counts = []
    for identities, hot, history in IDENTITY_TABLES:
        # One scan for the candidates; each batch checks them again under its locks.
        # last_seen_hour (migrations/0007) is indexed, last_seen is not (HOT refreshes).
        candidates = [r["key"] for r in await conn.fetch(
            f"SELECT key FROM {identities} WHERE last_seen_hour <= $1 AND last_seen < $1 "
            f"ORDER BY key", cutoff)]
        deleted = 0
        for start in range(0, len(candidates), batch):
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                locked = [r["key"] for r in await conn.fetch(
                    f"SELECT key FROM {identities} WHERE key = ANY($1::bigint[]) "
                    f"AND last_seen < $2 ORDER BY key FOR UPDATE SKIP LOCKED",
                    candidates[start:start + batch], cutoff)]
                if not locked:
                    continue
                status = await conn.execute(
                    f"DELETE FROM {identities} i WHERE i.key = ANY($1::bigint[]) "
                    f"AND i.last_seen < $2 "
                    f"AND NOT EXISTS (SELECT 1 FROM {hot} p WHERE p.key = i.key) "
                    f"AND NOT EXISTS (SELECT 1 FROM {history} h WHERE h.key = i.key)",
                    locked, cutoff)
                deleted += int(status.rsplit(" ", 1)[1])
        counts.append(deleted)
    return counts[0], counts[1]


async def apply_retention(conn: asyncpg.Connection, today: date, retention: Retention,
                          ahead_days: int = 3) -> RetentionReport:
    """Every tier's retention: drop (and create ahead) the day partitions by tier, then
    expire the identities left without history."""
    upkeep = await partition_upkeep(conn, today, retention, ahead_days)
    report = RetentionReport(ran=upkeep.ran, dropped=upkeep.dropped, created=upkeep.created)
    cutoff = retention.history_cutoff(today)
    report.expired_identities, report.expired_groups = await expire_identities(conn, cutoff)
    if report.expired_identities:
        # /api/processes/new's (server, name) first sightings follow their identities
        # (migrations/0007): a name whose whole history expired is new again when it returns.
        report.forgotten_names = await conn.fetchval("SELECT process_names_forget($1)", cutoff)
        # and the search's dictionary of names and command lines (migrations/0007)
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            report.forgotten_texts = await conn.fetchval("SELECT process_texts_forget()")
    if report.dropped or report.expired_identities or report.expired_groups:
        log.info("retention", extra={"kv": report.as_kv()})
    return report
