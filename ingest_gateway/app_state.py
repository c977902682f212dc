"""The gateway's shared state under typed ``web.AppKey``s.

Settings and metrics exist from ``create_app`` on; the Redis client, the raw connection pool,
the token cache and the backlog monitor are created in the app's cleanup context (they need the
running loop) and stored on the ``GatewayState`` object, because aiohttp freezes the app's
mapping before startup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from ingest_gateway.auth import TokenCache
from ingest_gateway.ingest.backpressure import BacklogMonitor
from ingest_gateway.ingest.durability import AofBarrier
from ingest_gateway.ingest.enqueue import Enqueuer
from ingest_gateway.ingest.resp import RespPool
from ingest_gateway.metrics import GatewayMetrics
from ingest_gateway.ratelimit import RateLimiter
from ingest_gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    """Clients of a running gateway (set on startup, closed on cleanup)."""

    redis: Redis | None = None
    pool: RespPool | None = None
    enqueuer: Enqueuer | None = None
    barrier: AofBarrier | None = None  # set when WAITAOF is asked for and supported
    tokens: TokenCache | None = None
    monitor: BacklogMonitor | None = None
    limiter: RateLimiter | None = None
    wait_aof: bool = False  # True once WAITAOF is known to work on this server
    in_flight: int = 0  # requests whose handler has started and not answered yet
    totals: dict[str, int] = field(default_factory=lambda: {
        "reports": 0, "duplicates": 0, "messages": 0, "rejected": 0})


SETTINGS = web.AppKey("procfleet_settings", GatewaySettings)
METRICS = web.AppKey("procfleet_metrics", GatewayMetrics)
STATE = web.AppKey("procfleet_state", GatewayState)
# Key/value pairs a handler notes for the request's access log line.
LOG_KV = web.RequestKey("procfleet_log_kv", dict[str, Any])
# OpenAPI path items of every registered route, filled by each route module's ``setup``.
OPENAPI_PATHS = web.AppKey("procfleet_openapi_paths", dict[str, Any])
