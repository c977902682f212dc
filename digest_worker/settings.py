"""Worker settings: read once from the environment (and command-line overrides), validated,
then passed in as one object. Nothing else in ``digest_worker`` reads ``os.environ``.

| setting              | environment                          | default                    |
|----------------------|--------------------------------------|----------------------------|
| redis_url            | REDIS_URL                            | redis://127.0.0.1:6379/0   |
| database_url         | DATABASE_URL                         | postgresql://postgres@     |
|                      |                                      |   127.0.0.1:5432/postgres  |
| shards               | PROCFLEET_SHARDS (if Redis has none) | stream.DEFAULT_SHARDS      |
| batch_size           | PROCFLEET_WORKER_BATCH_SIZE          | 5000                       |
| batch_max_wait_ms    | PROCFLEET_WORKER_BATCH_MAX_WAIT_MS   | 200                        |
| block_ms             | PROCFLEET_WORKER_BLOCK_MS            | 2000                       |
| socket_timeout_s     | PROCFLEET_WORKER_SOCKET_TIMEOUT_S    | 15                         |
| claim_idle_ms        | PROCFLEET_WORKER_CLAIM_IDLE_MS       | 60000                      |
| max_deliveries       | PROCFLEET_WORKER_MAX_DELIVERIES      | 5                          |
| retention_days       | PROCFLEET_RETENTION_DAYS             | 7                          |
| partitions_ahead_days| PROCFLEET_PARTITIONS_AHEAD_DAYS      | 3                          |
| upkeep_interval_s    | PROCFLEET_UPKEEP_INTERVAL_S          | 3600                       |
| hot_window_h         | PROCFLEET_HOT_WINDOW_H               | 2                          |
| compact_interval_s   | PROCFLEET_COMPACT_INTERVAL_S         | 300                        |
| summary_interval_s   | PROCFLEET_WORKER_SUMMARY_INTERVAL_S  | 30                         |
| insert_method        | PROCFLEET_WORKER_INSERT_METHOD       | copy                       |
| retry_max_delay_s    | PROCFLEET_WORKER_RETRY_MAX_DELAY_S   | 30                         |
| dead_letter_maxlen   | PROCFLEET_DEAD_LETTER_MAXLEN         | 100000                     |
| consumer_name        | PROCFLEET_WORKER_CONSUMER            | <hostname>-<pid>-<random>  |
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.errors import ConfigError
from ingest_gateway import stream

INSERT_METHODS = ("copy", "staging", "unnest")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def default_consumer_name() -> str:
    """``hostname-pid-random``: distinct for every worker process, even on one host."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a digest worker needs to know, validated on construction."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = DEFAULT_DATABASE_URL
    shards: int = stream.DEFAULT_SHARDS
    batch_size: int = 5000
    batch_max_wait_ms: int = 200
    block_ms: int = 2000
    socket_timeout_s: float = 15.0
    claim_idle_ms: int = 60_000
    max_deliveries: int = 5
    retention_days: int = 7
    partitions_ahead_days: int = 3
    upkeep_interval_s: float = 3600.0
    # Samples stay one row each for this long, then are compacted (digest_worker/compaction.py)
    hot_window_h: float = 2.0
    compact_interval_s: float = 300.0
    summary_interval_s: float = 30.0
    insert_method: str = "copy"
    retry_max_delay_s: float = 30.0
    dead_letter_maxlen: int = 100_000
    consumer_name: str = field(default_factory=default_consumer_name)
    metrics_port: int | None = None
    burst: bool = False

    def __post_init__(self) -> None:
        _positive = {
            "shards": self.shards, "batch_size": self.batch_size,
            "block_ms": self.block_ms, "socket_timeout_s": self.socket_timeout_s,
            "claim_idle_ms": self.claim_idle_ms, "max_deliveries": self.max_deliveries,
            "retention_days": self.retention_days,
            "upkeep_interval_s": self.upkeep_interval_s,
            "compact_interval_s": self.compact_interval_s,
            "summary_interval_s": self.summary_interval_s,
            "retry_max_delay_s": self.retry_max_delay_s,
            "dead_letter_maxlen": self.dead_letter_maxlen,
        }
        for key, value in _positive.items():
            if value <= 0:
                raise ConfigError(key, value, "must be > 0")
        if self.batch_max_wait_ms < 0 or self.partitions_ahead_days < 0:
            bad = "batch_max_wait_ms" if self.batch_max_wait_ms < 0 else "partitions_ahead_days"
            raise ConfigError(bad, getattr(self, bad), "must be >= 0")
        if self.hot_window_h < 0:
            raise ConfigError("hot_window_h", self.hot_window_h, "must be >= 0")
        if self.shards > stream.MAX_SHARDS:
            raise ConfigError("shards", self.shards, f"must be <= {stream.MAX_SHARDS}")
        if self.insert_method not in INSERT_METHODS:
            raise ConfigError(
                "insert_method", self.insert_method, f"choose one of {INSERT_METHODS}"
            )
        # A blocking XREADGROUP must return well before the socket gives up on it.
        if self.block_ms / 1000 > self.socket_timeout_s / 2:
            raise ConfigError(
                "block_ms", self.block_ms,
                f"must be at most half of socket_timeout_s={self.socket_timeout_s}",
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port", self.metrics_port, "must be a TCP port")
        for key in ("redis_url", "database_url"):
            scheme = urlsplit(getattr(self, key)).scheme
            allowed = ("redis", "rediss", "unix") if key == "redis_url" else (
                "postgres", "postgresql")
            if scheme not in allowed:
                raise ConfigError(key, mask_url(getattr(self, key)), f"scheme must be {allowed}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> WorkerSettings:
        """Settings from environment variables (see the module table), then ``overrides``
        (command-line options; ``None`` values are ignored)."""
        values: dict[str, Any] = {}
        for name, env in _ENV.items():
            raw = environ.get(env)
            if raw is None or raw == "":
                continue
            values[name] = _convert(name, env, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **changes: Any) -> WorkerSettings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The effective settings for the start line, passwords masked."""
        values = dataclasses.asdict(self)
        values["redis_url"] = mask_url(self.redis_url)
        values["database_url"] = mask_url(self.database_url)
        return values


_ENV = {
    "redis_url": "REDIS_URL",
    "database_url": "DATABASE_URL",
    "shards": "PROCFLEET_SHARDS",
    "batch_size": "PROCFLEET_WORKER_BATCH_SIZE",
    "batch_max_wait_ms": "PROCFLEET_WORKER_BATCH_MAX_WAIT_MS",
    "block_ms": "PROCFLEET_WORKER_BLOCK_MS",
    "socket_timeout_s": "PROCFLEET_WORKER_SOCKET_TIMEOUT_S",
    "claim_idle_ms": "PROCFLEET_WORKER_CLAIM_IDLE_MS",
    "max_deliveries": "PROCFLEET_WORKER_MAX_DELIVERIES",
    "retention_days": "PROCFLEET_RETENTION_DAYS",
    "partitions_ahead_days": "PROCFLEET_PARTITIONS_AHEAD_DAYS",
    "upkeep_interval_s": "PROCFLEET_UPKEEP_INTERVAL_S",
    "hot_window_h": "PROCFLEET_HOT_WINDOW_H",
    "compact_interval_s": "PROCFLEET_COMPACT_INTERVAL_S",
    "summary_interval_s": "PROCFLEET_WORKER_SUMMARY_INTERVAL_S",
    "insert_method": "PROCFLEET_WORKER_INSERT_METHOD",
    "retry_max_delay_s": "PROCFLEET_WORKER_RETRY_MAX_DELAY_S",
    "dead_letter_maxlen": "PROCFLEET_DEAD_LETTER_MAXLEN",
    "consumer_name": "PROCFLEET_WORKER_CONSUMER",
}


def _convert(name: str, env: str, raw: str) -> Any:
    kind = WorkerSettings.__dataclass_fields__[name].type
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(env, raw, f"must be a number ({kind})") from None
    return raw
