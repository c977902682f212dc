"""Worker settings: read once from the environment (and command-line overrides) by the one
loader (``agent.settings_loader``), validated, then passed in as one object. Nothing else in
``digest_worker`` reads ``os.environ``. Each field names its environment variable and bounds.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from agent.settings_loader import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Settings,
    integer,
    mask_url,
    number,
    setting,
    text,
    url,
)
from ingest_gateway import stream

__all__ = ["DEFAULT_DATABASE_URL", "INSERT_METHODS", "RETENTION_TIERS", "WorkerSettings",
           "mask_url"]

INSERT_METHODS = ("copy", "staging", "unnest")
_DAY_S = 86_400.0
# The retention tiers nest, shortest first: a late sample (accepted for retention_days)
# recomputes its minute cells and, from them, its hour; hour cells are made from minute cells.
RETENTION_TIERS = ("retention_days", "rollup_minute_retention_days",
                   "rollup_hour_retention_days")


def default_consumer_name() -> str:
    """``hostname-pid-random``: distinct for every worker process, even on one host."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerSettings(Settings):
    """Everything a digest worker needs to know, validated on construction."""

    redis_url: str = setting(DEFAULT_REDIS_URL, "REDIS_URL", url("redis", "rediss", "unix"))
    database_url: str = setting(DEFAULT_DATABASE_URL, "DATABASE_URL",
                                url("postgres", "postgresql"))
    # Used only if Redis holds no shard count yet.
    shards: int = setting(stream.DEFAULT_SHARDS, "PROCFLEET_SHARDS",
                          integer(1, stream.MAX_SHARDS))
    batch_size: int = setting(5000, "PROCFLEET_WORKER_BATCH_SIZE", integer(1, 1_000_000))
    batch_max_wait_ms: int = setting(200, "PROCFLEET_WORKER_BATCH_MAX_WAIT_MS",
                                     integer(0, 600_000))
    block_ms: int = setting(2000, "PROCFLEET_WORKER_BLOCK_MS", integer(1, 600_000))
    socket_timeout_s: float = setting(15.0, "PROCFLEET_WORKER_SOCKET_TIMEOUT_S",
                                      number(0, 3_600, above=True))
    claim_idle_ms: int = setting(60_000, "PROCFLEET_WORKER_CLAIM_IDLE_MS",
                                 integer(1, 7 * 86_400_000))
    max_deliveries: int = setting(5, "PROCFLEET_WORKER_MAX_DELIVERIES", integer(1, 1_000))
    # Retention per tier (digest_worker/retention.py; README "Retention and disk"). Days of
    # per-process history: hot rows, compacted history and clocks, identities, group samples,
    # snapshots. 14: two weekly cycles to compare a process with; ~8 B a sample makes that
    # ~18 MB per host per day.
    retention_days: int = setting(14, "PROCFLEET_RETENTION_DAYS", integer(1, 36_500))
    # Minute cells: a month of 1-minute peaks for the dashboards' last-days views.
    rollup_minute_retention_days: int = setting(
        30, "PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS", integer(1, 36_500))
    # Hour cells: a year and a month, for a year-over-year look at a name (~2 % of the
    # minute cells' size).
    rollup_hour_retention_days: int = setting(
        400, "PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS", integer(1, 36_500))
    partitions_ahead_days: int = setting(3, "PROCFLEET_PARTITIONS_AHEAD_DAYS", integer(0, 366))
    upkeep_interval_s: float = setting(3600.0, "PROCFLEET_UPKEEP_INTERVAL_S",
                                       number(0, _DAY_S, above=True))
    # Samples stay one row each for this long, then are compacted (digest_worker/compaction.py)
    hot_window_h: float = setting(2.0, "PROCFLEET_HOT_WINDOW_H", number(0, 24 * 366))
    compact_interval_s: float = setting(300.0, "PROCFLEET_COMPACT_INTERVAL_S",
                                        number(0, _DAY_S, above=True))
    summary_interval_s: float = setting(30.0, "PROCFLEET_WORKER_SUMMARY_INTERVAL_S",
                                        number(0, _DAY_S, above=True))
    insert_method: str = setting("copy", "PROCFLEET_WORKER_INSERT_METHOD",
                                 text(choices=INSERT_METHODS))
    retry_max_delay_s: float = setting(30.0, "PROCFLEET_WORKER_RETRY_MAX_DELAY_S",
                                       number(0, 3_600, above=True))
    dead_letter_maxlen: int = setting(100_000, "PROCFLEET_DEAD_LETTER_MAXLEN",
                                      integer(1, 2**62))
    # How long isolating the poison of one batch may go on before the unresolved rest is
    # handed back (unacknowledged, delivered again later): one host's poison cannot hold the
    # worker, and every other host's backlog, for longer.
    batch_timeout_s: float = setting(60.0, "PROCFLEET_WORKER_BATCH_TIMEOUT_S",
                                     number(0, _DAY_S, above=True))
    # After SIGTERM: how long a batch being written may still take before it is abandoned
    # (rolled back, unacknowledged, delivered again later).
    shutdown_timeout_s: float = setting(10.0, "PROCFLEET_WORKER_SHUTDOWN_TIMEOUT_S",
                                        number(0, 3_600, above=True))
    consumer_name: str = setting(env="PROCFLEET_WORKER_CONSUMER", kind=text(),
                                 factory=default_consumer_name)
    metrics_port: int | None = setting(None, kind=integer(0, 65_535))  # --metrics-port
    # Loopback unless told otherwise: /metrics names hosts and their backlog.
    metrics_host: str = setting("127.0.0.1", "PROCFLEET_WORKER_METRICS_HOST", text())
    burst: bool = setting(False)  # --burst

    def check_together(self) -> None:
        self.check_ascending(*RETENTION_TIERS)
        # A blocking XREADGROUP must return well before the socket gives up on it.
        if self.block_ms / 1000 > self.socket_timeout_s / 2:
            raise self.invalid(
                "block_ms", f"must be at most half of socket_timeout_s={self.socket_timeout_s}")
