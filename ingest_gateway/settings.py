"""Gateway settings: read once from the environment by the one loader
(``agent.settings_loader``), validated, passed in as one object.

Every knob has a default that works on one box; its environment variable and its bounds are
named next to it. Nothing else in ``ingest_gateway`` reads ``os.environ``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.settings_loader import (
    BOOLEAN,
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Kind,
    Settings,
    integer,
    mask_url,
    number,
    setting,
    text,
    url,
)
from ingest_gateway import stream

__all__ = ["DEFAULT_DATABASE_URL", "DEFAULT_REDIS_URL", "GatewaySettings", "mask_url"]

MIB = 1024 * 1024
REDIS_URL = url("redis", "rediss", "unix")
DATABASE_URL = url("postgres", "postgresql")
_DAY_S = 86_400.0


def _count(high: int = 2**62) -> Kind:
    return integer(1, high)


def _seconds(high: float = _DAY_S) -> Kind:
    return number(0, high, above=True)


@dataclass(frozen=True)
class GatewaySettings(Settings):
    """Effective settings of one gateway process."""

    redis_url: str = setting(DEFAULT_REDIS_URL, "REDIS_URL", REDIS_URL)
    shards: int = setting(stream.DEFAULT_SHARDS, "PROCFLEET_SHARDS",
                          integer(1, stream.MAX_SHARDS))
    # wire size and inflated size alike
    max_body_bytes: int = setting(8 * MIB, "PROCFLEET_MAX_BODY_BYTES", _count())
    # messages waiting in one shard before 503
    backlog_high_water: int = setting(1_000_000, "PROCFLEET_BACKLOG_HIGH_WATER", _count())
    backlog_refresh_s: float = setting(1.0, "PROCFLEET_BACKLOG_REFRESH_S", _seconds())
    retry_after_s: int = setting(5, "PROCFLEET_RETRY_AFTER_S", _count(86_400))
    wait_aof: bool = setting(False, "PROCFLEET_WAIT_AOF", BOOLEAN)
    wait_aof_timeout_ms: int = setting(1_000, "PROCFLEET_WAIT_AOF_TIMEOUT_MS", _count(600_000))
    # WAIT for this many replicas (per master on a cluster) before a 2xx; 0: do not wait
    wait_replicas: int = setting(0, "PROCFLEET_WAIT_REPLICAS", integer(0, 100))
    # then 503 + Retry-After
    wait_replicas_timeout_ms: int = setting(1_000, "PROCFLEET_WAIT_REPLICAS_TIMEOUT_MS",
                                            _count(600_000))
    tls_cert_file: str | None = setting(None, "PROCFLEET_TLS_CERT", text())
    tls_key_file: str | None = setting(None, "PROCFLEET_TLS_KEY", text())
    # per token; 0 turns the limit off
    rate_limit_per_s: float = setting(500.0, "PROCFLEET_RATE_LIMIT_PER_S", number(0, 1e9))
    rate_limit_burst: int = setting(1_000, "PROCFLEET_RATE_LIMIT_BURST", _count())
    # Failed token attempts (401) per source address: a burst, then this rate; 0 = no limit.
    # Behind a proxy the source is the proxy: raise these or turn them off there.
    auth_failures_per_s: float = setting(1.0, "PROCFLEET_AUTH_FAILURES_PER_S", number(0, 1e9))
    auth_failures_burst: int = setting(30, "PROCFLEET_AUTH_FAILURES_BURST", _count())
    # Slow clients (slow_clients.py): a request's headers must be complete within
    # header_timeout_s (from the connection, or from its first byte on a kept-alive one), its
    # body within body_timeout_s of the headers; an idle kept-alive connection is closed after
    # keepalive_timeout_s.
    header_timeout_s: float = setting(10.0, "PROCFLEET_HEADER_TIMEOUT_S", _seconds(3_600))
    body_timeout_s: float = setting(60.0, "PROCFLEET_BODY_TIMEOUT_S", _seconds(3_600))
    keepalive_timeout_s: float = setting(75.0, "PROCFLEET_KEEPALIVE_TIMEOUT_S", _seconds())
    dedupe_ttl_s: int = setting(3_600, "PROCFLEET_DEDUPE_TTL_S", _count(30 * 86_400))
    # Same variables, defaults and rule as the digest workers' (digest_worker/settings.py):
    # samples older than retention_days are refused; queries start at each tier's horizon.
    retention_days: int = setting(14, "PROCFLEET_RETENTION_DAYS", _count(36_500))
    rollup_minute_retention_days: int = setting(
        30, "PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS", _count(36_500))
    rollup_hour_retention_days: int = setting(
        400, "PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS", _count(36_500))
    max_future_s: float = setting(600.0, "PROCFLEET_MAX_FUTURE_S", _seconds())
    max_raw_output_bytes: int = setting(1 * MIB, "PROCFLEET_MAX_RAW_OUTPUT_BYTES", _count())
    redis_timeout_s: float = setting(5.0, "PROCFLEET_REDIS_TIMEOUT_S", _seconds(3_600))
    redis_pool_size: int = setting(16, "PROCFLEET_REDIS_POOL_SIZE", _count(10_000))
    # how long to wait for Redis when starting
    redis_startup_wait_s: float = setting(10.0, "PROCFLEET_REDIS_STARTUP_WAIT_S", _seconds())
    token_refresh_s: float = setting(5.0, "PROCFLEET_TOKEN_REFRESH_S", _seconds())
    shutdown_timeout_s: float = setting(30.0, "PROCFLEET_SHUTDOWN_TIMEOUT_S", _seconds())
    # Query API only (query/routes.py): the pool is created lazily, so ingest runs without it.
    database_url: str = setting(DEFAULT_DATABASE_URL, "DATABASE_URL", DATABASE_URL)
    # Where the query API reads (e.g. a streaming replica); unset: database_url.
    query_database_url: str | None = setting(None, "PROCFLEET_QUERY_DATABASE_URL",
                                             DATABASE_URL)

    def check_together(self) -> None:
        self.check_ascending("retention_days", "rollup_minute_retention_days",
                             "rollup_hour_retention_days")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise self.invalid("tls_cert_file", "TLS needs both a certificate and a key file")

    @property
    def effective_query_database_url(self) -> str:
        """The query API's database: ``PROCFLEET_QUERY_DATABASE_URL``, else ``DATABASE_URL``."""
        return self.query_database_url or self.database_url
