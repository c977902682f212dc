"""Gateway settings: read once from the environment, validated, passed in as one object.

Every knob has a default that works on one box; the environment variable that overrides it is
named next to the field. Nothing else in ``ingest_gateway`` reads ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.errors import ConfigError
from ingest_gateway import stream

MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    """Effective settings of one gateway process (see ``ENV_NAMES`` for the variables)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    shards: int = stream.DEFAULT_SHARDS
    max_body_bytes: int = 8 * MIB  # wire size and inflated size alike
    backlog_high_water: int = 1_000_000  # messages waiting in one shard before 503
    backlog_refresh_s: float = 1.0
    retry_after_s: int = 5
    wait_aof: bool = False
    wait_aof_timeout_ms: int = 1_000
    wait_replicas: int = 0  # WAIT for this many replicas before a 2xx (0: do not wait)
    wait_replicas_timeout_ms: int = 1_000  # then 503 + Retry-After
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    rate_limit_per_s: float = 500.0  # per token; 0 turns the limit off
    rate_limit_burst: int = 1_000
    dedupe_ttl_s: int = 3_600
    retention_days: int = 7  # same variable and default as the digest workers
    max_future_s: float = 600.0
    max_raw_output_bytes: int = 1 * MIB
    redis_timeout_s: float = 5.0
    redis_pool_size: int = 16
    redis_startup_wait_s: float = 10.0  # how long to wait for Redis when starting
    token_refresh_s: float = 5.0
    shutdown_timeout_s: float = 30.0
    # Query API only (routes_query): the pool is created lazily, so ingest runs without it.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # Where the query API reads (e.g. a streaming replica); None: database_url.
    query_database_url: str | None = None

    def __post_init__(self) -> None:
        _check(self.shards >= 1 and self.shards <= stream.MAX_SHARDS, "shards", self.shards,
               f"must be between 1 and {stream.MAX_SHARDS}")
        for name in ("max_body_bytes", "backlog_high_water", "retry_after_s",
                     "wait_aof_timeout_ms", "wait_replicas_timeout_ms", "rate_limit_burst",
                     "dedupe_ttl_s", "retention_days", "max_raw_output_bytes", "redis_pool_size"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("backlog_refresh_s", "redis_timeout_s", "token_refresh_s",
                     "shutdown_timeout_s", "max_future_s", "redis_startup_wait_s"):
            _check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        _check(self.wait_replicas >= 0, "wait_replicas", self.wait_replicas, "must be >= 0")
        _check(self.rate_limit_per_s >= 0, "rate_limit_per_s", self.rate_limit_per_s,
               "must be >= 0 (0 turns the limit off)")
        _check((self.tls_cert_file is None) == (self.tls_key_file is None), "tls_cert_file",
               self.tls_cert_file, "TLS needs both a certificate and a key file")
        scheme = urlsplit(self.redis_url).scheme
        _check(scheme in ("redis", "rediss", "unix"), "redis_url", mask_url(self.redis_url),
               "scheme must be redis://, rediss:// or unix://")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> GatewaySettings:
        """Settings from environment variables (unset or empty = default), then ``overrides``."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(ENV_NAMES[field.name], "").strip()
            if raw:
                values[field.name] = _PARSERS[field.name](ENV_NAMES[field.name], raw)
        values.update(overrides)
        return cls(**values)

    def masked(self) -> dict[str, Any]:
        """The settings for the startup log line, with the Redis password hidden."""
        return {**asdict(self), "redis_url": mask_url(self.redis_url),
                "database_url": mask_url(self.database_url),
                "query_database_url": mask_url(self.effective_query_database_url)}

    @property
    def effective_query_database_url(self) -> str:
        """The query API's database: ``PROCFLEET_QUERY_DATABASE_URL``, else ``DATABASE_URL``."""
        return self.query_database_url or self.database_url


ENV_NAMES: dict[str, str] = {
    "redis_url": "REDIS_URL",
    "shards": "PROCFLEET_SHARDS",
    "max_body_bytes": "PROCFLEET_MAX_BODY_BYTES",
    "backlog_high_water": "PROCFLEET_BACKLOG_HIGH_WATER",
    "backlog_refresh_s": "PROCFLEET_BACKLOG_REFRESH_S",
    "retry_after_s": "PROCFLEET_RETRY_AFTER_S",
    "wait_aof": "PROCFLEET_WAIT_AOF",
    "wait_aof_timeout_ms": "PROCFLEET_WAIT_AOF_TIMEOUT_MS",
    "wait_replicas": "PROCFLEET_WAIT_REPLICAS",
    "wait_replicas_timeout_ms": "PROCFLEET_WAIT_REPLICAS_TIMEOUT_MS",
    "tls_cert_file": "PROCFLEET_TLS_CERT",
    "tls_key_file": "PROCFLEET_TLS_KEY",
    "rate_limit_per_s": "PROCFLEET_RATE_LIMIT_PER_S",
    "rate_limit_burst": "PROCFLEET_RATE_LIMIT_BURST",
    "dedupe_ttl_s": "PROCFLEET_DEDUPE_TTL_S",
    "retention_days": "PROCFLEET_RETENTION_DAYS",
    "max_future_s": "PROCFLEET_MAX_FUTURE_S",
    "max_raw_output_bytes": "PROCFLEET_MAX_RAW_OUTPUT_BYTES",
    "redis_timeout_s": "PROCFLEET_REDIS_TIMEOUT_S",
    "redis_pool_size": "PROCFLEET_REDIS_POOL_SIZE",
    "redis_startup_wait_s": "PROCFLEET_REDIS_STARTUP_WAIT_S",
    "token_refresh_s": "PROCFLEET_TOKEN_REFRESH_S",
    "shutdown_timeout_s": "PROCFLEET_SHUTDOWN_TIMEOUT_S",
    "database_url": "DATABASE_URL",
    "query_database_url": "PROCFLEET_QUERY_DATABASE_URL",
}


def _check(ok: bool, name: str, value: object, reason: str) -> None:
    if not ok:
        raise ConfigError(ENV_NAMES.get(name, name), value, reason)


def _int(key: str, raw: str) -> int:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(key, raw, "must be an integer") from None


def _float(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(key, raw, "must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(key, raw, "must be a finite number")
    return value


def _bool(key: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, raw, "must be true or false")


def _str(key: str, raw: str) -> str:
    return raw


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    f.name: {"int": _int, "float": _float, "bool": _bool}.get(str(f.type), _str)
    for f in fields(GatewaySettings)
}


def mask_url(url: str) -> str:
    """``redis://:***@host:6379/0``: a URL fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
