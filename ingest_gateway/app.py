"""The gateway's aiohttp application: ``create_app`` builds it (``server.serve`` runs it).

Route families register themselves with a ``setup(app)`` function, each listed once in
``ROUTE_FAMILIES``: ingest (``ingest/routes.py``), host enrollment (``ingest/enroll.py``), the
query API and the dashboard (``query/routes.py``), the MCP tools (``query/mcp/route.py``),
operations (``routes_ops``) and the OpenAPI document (``openapi``). A new family is added to
that tuple (tests may pass more with ``extra_routes``). A ``setup`` may add its own
``cleanup_ctx`` (e.g. a PostgreSQL pool), guard its routes with
``guards.require_scope(request, "read")`` and document them in
``app[OPENAPI_PATHS]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from aiohttp import web
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from agent.errors import ProcfleetError
from ingest_gateway import openapi, routes_ops
from ingest_gateway.app_state import METRICS, OPENAPI_PATHS, SETTINGS, STATE, GatewayState
from ingest_gateway.auth import TokenCache, TokenStore
from ingest_gateway.ingest import enroll as enroll_routes
from ingest_gateway.ingest import routes as ingest_routes
from ingest_gateway.ingest.backpressure import BacklogMonitor, sleep_unless_stopping
from ingest_gateway.ingest.cluster import ClusterRouter, is_cluster
from ingest_gateway.ingest.cluster_enqueue import ClusterEnqueuer, barrier_key
from ingest_gateway.ingest.durability import AofBarrier
from ingest_gateway.ingest.enqueue import Enqueuer
from ingest_gateway.ingest.resp import ConnectParams, RespPool
from ingest_gateway.ingest.topology import ensure_group, probe_wait_aof, register_shards
from ingest_gateway.metrics import GatewayMetrics
from ingest_gateway.middleware import AccessLogger, access_log, observe
from ingest_gateway.query import routes as query_routes
from ingest_gateway.query.mcp import route as query_mcp
from ingest_gateway.ratelimit import RateLimiter
from ingest_gateway.settings import GatewaySettings, mask_url

log = logging.getLogger(__name__)

RouteSetup = Callable[[web.Application], None]
# Every route family of the gateway, registered in this order. Listed, not discovered: a
# renamed module fails at import instead of silently dropping its routes.
ROUTE_FAMILIES: tuple[RouteSetup, ...] = (
    ingest_routes.setup, enroll_routes.setup, query_routes.setup, query_mcp.setup,
    routes_ops.setup, openapi.setup)


async def _wait_for_redis(redis: Redis, settings: GatewaySettings) -> None:
    deadline = asyncio.get_running_loop().time() + settings.redis_startup_wait_s
    while True:
        try:
            await redis.ping()
            return
        except (RedisError, OSError) as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise GatewayStartError(
                    f"cannot reach Redis at {mask_url(settings.redis_url)} after "
                    f"{settings.redis_startup_wait_s:g} s: {exc}") from exc
            log.warning("waiting for Redis", extra={"kv": {"error": str(exc)}})
            await asyncio.sleep(0.5)


class GatewayStartError(ProcfleetError):
    """The gateway cannot start (Redis unreachable)."""


async def _refresh_tokens(tokens: TokenCache, every_s: float, stopping: asyncio.Event) -> None:
    failing = False
    while not stopping.is_set():
        await sleep_unless_stopping(stopping, every_s)
        try:
            await tokens.refresh()
            failing = False
        except (RedisError, OSError) as exc:
            if not failing:  # one line per outage, not one per refresh
                log.warning("token refresh failed; using cached tokens",
                            extra={"kv": {"error": str(exc)}})
            failing = True


async def _connect(settings: GatewaySettings) -> tuple[Redis, bool, ConnectParams]:
    """The control-plane client (tokens, shard count, groups, backlog), whether ``REDIS_URL``
    names a cluster node, and the fast path's connection parameters. On a cluster the
    client is a ``RedisCluster`` that learned every node from the one in the URL."""
    seed = Redis.from_url(
        settings.redis_url, protocol=2, socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    try:
        await _wait_for_redis(seed, settings)
        clustered = await is_cluster(seed)
        params = ConnectParams.from_redis(seed)
    except BaseException:
        await seed.aclose()
        raise
    if not clustered:
        return seed, False, params
    await seed.aclose()
    if params.db:
        raise GatewayStartError(f"REDIS_URL {mask_url(settings.redis_url)} names database "
                                f"{params.db}, but a cluster has database 0 only")
    client = RedisCluster.from_url(
        settings.redis_url, protocol=2, socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    await client.initialize()
    return client, True, params


async def _enqueue_path(settings: GatewaySettings, state: GatewayState,
                        params: ConnectParams) -> None:
    """The fast path's pools, enqueuer and durability barrier(s), on one server or a cluster."""
    # WAITAOF 1 N covers both waits in one: give it the longer of the two timeouts.
    barrier_options = dict(
        wait_aof_timeout_ms=max(
            settings.wait_aof_timeout_ms if state.wait_aof else 0,
            settings.wait_replicas_timeout_ms if settings.wait_replicas else 0),
        timeout_s=settings.redis_timeout_s, retry_after_s=settings.retry_after_s,
        wait_aof=state.wait_aof, replicas=settings.wait_replicas)
    wants_barrier = state.wait_aof or settings.wait_replicas > 0
    if state.clustered:
        router = state.router = ClusterRouter(
            params, pool_size=settings.redis_pool_size, timeout_s=settings.redis_timeout_s)
        await router.refresh()

        def shard_barrier(shard: int) -> AofBarrier:
            key = barrier_key(shard)
            slot = ClusterRouter.slot_of_key(key)
            return AofBarrier(lambda: router.pool_for_slot(slot), key=key,
                              on_failure=router.note_failure, **barrier_options)

        state.enqueuer = ClusterEnqueuer(
            router, shards=settings.shards, dedupe_ttl_s=settings.dedupe_ttl_s,
            timeout_s=settings.redis_timeout_s, retry_after_s=settings.retry_after_s,
            barrier=shard_barrier if wants_barrier else None,
        )
        return
    state.pool = RespPool(params, size=settings.redis_pool_size,
                          timeout_s=settings.redis_timeout_s)
    if wants_barrier:
        state.barrier = AofBarrier(state.pool, **barrier_options)
    state.enqueuer = Enqueuer(
        state.pool, shards=settings.shards, dedupe_ttl_s=settings.dedupe_ttl_s,
        timeout_s=settings.redis_timeout_s, retry_after_s=settings.retry_after_s,
        barrier=state.barrier,
    )


async def _clients(app: web.Application) -> AsyncIterator[None]:
    """Redis clients and background tasks: created on startup, closed on cleanup."""
    settings, metrics, state = app[SETTINGS], app[METRICS], app[STATE]
    own_redis = state.redis is None
    tasks: list[asyncio.Task] = []
    stopping = asyncio.Event()
    redis: Redis | None = state.redis
    try:
        if redis is None:
            redis, state.clustered, params = await _connect(settings)
        else:
            await _wait_for_redis(redis, settings)
            state.clustered = isinstance(redis, RedisCluster)
            params = (ConnectParams.from_redis(redis) if not state.clustered
                      else ConnectParams.from_redis(Redis.from_url(settings.redis_url)))
        state.redis = redis
        await register_shards(redis, settings.shards)
        for shard in range(settings.shards):
            await ensure_group(redis, shard)
        if settings.wait_aof:
            state.wait_aof, why_not = await probe_wait_aof(redis)
            if not state.wait_aof:
                log.warning("wait_aof requested but unavailable: answering once messages are "
                            "in memory", extra={"kv": {"reason": why_not}})
        await _enqueue_path(settings, state, params)
        state.tokens = TokenCache(TokenStore(redis))
        await state.tokens.refresh()
        state.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        state.auth_failures = RateLimiter(settings.auth_failures_per_s,
                                          settings.auth_failures_burst)
        state.monitor = BacklogMonitor(
            redis, settings.shards, settings.backlog_high_water, settings.backlog_refresh_s,
            settings.retry_after_s, on_refresh=metrics.set_backlog,
        )
        await state.monitor.refresh()
        tasks = [
            asyncio.create_task(state.monitor.run(stopping), name="backlog-monitor"),
            asyncio.create_task(_refresh_tokens(state.tokens, settings.token_refresh_s, stopping),
                                name="token-refresh"),
        ]
        log.info("gateway started", extra={"kv": {**settings.describe(),
                                                  "wait_aof_active": state.wait_aof,
                                                  "cluster": state.clustered}})
        yield
    finally:
        stopping.set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=settings.redis_timeout_s)
            for task in late:  # stuck in a Redis call: cancel, and do not wait on it forever
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        if state.barrier is not None:
            await state.barrier.close()
        if isinstance(state.enqueuer, ClusterEnqueuer):
            await state.enqueuer.close()
        if state.router is not None:
            await state.router.close()
        if state.pool is not None:
            await state.pool.close()
        if own_redis and redis is not None:
            await asyncio.wait_for(redis.aclose(), settings.redis_timeout_s)
        if tasks:
            log.info("gateway stopped", extra={"kv": dict(state.totals)})


def create_app(
    settings: GatewaySettings,
    *,
    redis: Redis | None = None,
    extra_routes: Iterable[RouteSetup] = (),
) -> web.Application:
    """The gateway app. ``redis``: a client to use (and not close) instead of one built from
    ``settings.redis_url``. ``extra_routes``: more route ``setup`` functions (tests)."""
    app = web.Application(
        middlewares=[observe],
        client_max_size=settings.max_body_bytes,
        # body.read_body is the one place bodies are inflated (with a bound); the access log
        # is ours (logfmt, no token).
        handler_args={"auto_decompress": False, "access_log_class": AccessLogger,
                      "access_log": access_log,
                      "keepalive_timeout": settings.keepalive_timeout_s},
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[STATE] = GatewayState(redis=redis)
    app[OPENAPI_PATHS] = {}
    app.cleanup_ctx.append(_clients)
    for setup in (*ROUTE_FAMILIES, *extra_routes):
        setup(app)
    return app
