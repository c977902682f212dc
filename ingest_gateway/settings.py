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
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    rate_limit_per_s: float = 500.0  # per token; 0 turns the limit off
    rate_limit_burst: int = 1_000
    # Failed token attempts (401) per source address: a burst, then this rate; 0 = no limit.
    # Behind a proxy the source is the proxy: raise these or turn them off there.
    auth_failures_per_s: float = 1.0
    auth_failures_burst: int = 30
    dedupe_ttl_s: int = 3_600
    retention_days: int = 7  # same variable and default as the digest workers
    max_future_s: float = 600.0
    max_raw_output_bytes: int = 1 * MIB
    redis_timeout_s: float = 5.0
    redis_pool_size: int = 16
    redis_startup_wait_s: float = 10.0  # how long to wait for Redis when starting
    token_refresh_s: float = 5.0
    shutdown_timeout_s: float = 30.0
    # Slow clients (ingest_gateway/slow_clients.py): a request's headers must be complete
    # within header_timeout_s (from the connection, or from its first byte on a kept-alive
    # one), its body within body_timeout_s of the headers; an idle kept-alive connection is
    # closed after keepalive_timeout_s.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    # Query API only (routes_query): the pool is created lazily, so ingest runs without it.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"

    def __post_init__(self) -> None:
        _check(self.shards >= 1 and self.shards <= stream.MAX_SHARDS, "shards", self.shards,
               f"must be between 1 and {stream.MAX_SHARDS}")
        for name in ("max_body_bytes", "backlog_high_water", "retry_after_s",
                     "wait_aof_timeout_ms", "rate_limit_burst", "auth_failures_burst",
                     "dedupe_ttl_s",
                     "retention_days", "max_raw_output_bytes", "redis_pool_size"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("backlog_refresh_s", "redis_timeout_s", "token_refresh_s",
                     "shutdown_timeout_s", "max_future_s", "redis_startup_wait_s",
                     "header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            _check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
            _check(getattr(self, name) < float("inf"), name, getattr(self, name),
                   "must be finite")
        for name in ("rate_limit_per_s", "auth_failures_per_s"):
            _check(getattr(self, name) >= 0, name, getattr(self, name),
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
                "database_url": mask_url(self.database_url)}


ENV_NAMES: dict[str, str] = {
    "redis_url": "REDIS_URL",
    "shards": "PROCFLEET_SHARDS",
    "max_body_bytes": "PROCFLEET_MAX_BODY_BYTES",
    "backlog_high_water": "PROCFLEET_BACKLOG_HIGH_WATER",
    "backlog_refresh_s": "PROCFLEET_BACKLOG_REFRESH_S",
    "retry_after_s": "PROCFLEET_RETRY_AFTER_S",
    "wait_aof": "PROCFLEET_WAIT_AOF",
    "wait_aof_timeout_ms": "PROCFLEET_WAIT_AOF_TIMEOUT_MS",
    "tls_cert_file": "PROCFLEET_TLS_CERT",
    "tls_key_file": "PROCFLEET_TLS_KEY",
    "rate_limit_per_s": "PROCFLEET_RATE_LIMIT_PER_S",
    "rate_limit_burst": "PROCFLEET_RATE_LIMIT_BURST",
    "auth_failures_per_s": "PROCFLEET_AUTH_FAILURES_PER_S",
    "auth_failures_burst": "PROCFLEET_AUTH_FAILURES_BURST",
    "dedupe_ttl_s": "PROCFLEET_DEDUPE_TTL_S",
    "retention_days": "PROCFLEET_RETENTION_DAYS",
    "max_future_s": "PROCFLEET_MAX_FUTURE_S",
    "max_raw_output_bytes": "PROCFLEET_MAX_RAW_OUTPUT_BYTES",
    "redis_timeout_s": "PROCFLEET_REDIS_TIMEOUT_S",
    "redis_pool_size": "PROCFLEET_REDIS_POOL_SIZE",
    "redis_startup_wait_s": "PROCFLEET_REDIS_STARTUP_WAIT_S",
    "token_refresh_s": "PROCFLEET_TOKEN_REFRESH_S",
    "shutdown_timeout_s": "PROCFLEET_SHUTDOWN_TIMEOUT_S",
    "header_timeout_s": "PROCFLEET_HEADER_TIMEOUT_S",
    "body_timeout_s": "PROCFLEET_BODY_TIMEOUT_S",
    "keepalive_timeout_s": "PROCFLEET_KEEPALIVE_TIMEOUT_S",
    "database_url": "DATABASE_URL",
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
