"""Operational routes: ``/healthz`` (alive), ``/readyz`` (Redis and groups), ``/metrics``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from ingest_gateway import stream
from ingest_gateway.app_state import METRICS, OPENAPI_PATHS, SETTINGS, STATE
from ingest_gateway.errors import json_response
from ingest_gateway.ingest.topology import digest_group


async def healthz(request: web.Request) -> web.Response:
    """The process answers: nothing else is checked (a liveness probe must not flap with Redis)."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers and every shard's stream has the ``digest`` group."""
    state, settings = request.app[STATE], request.app[SETTINGS]
    assert state.redis is not None, "gateway not started"
    try:
        pipe = state.redis.pipeline(transaction=False)
        for shard in range(settings.shards):
            pipe.xinfo_groups(stream.sample_stream(shard))
        results = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        return json_response({"status": "unavailable", "reason": f"Redis: {exc}"}, status=503,
                             headers={"Retry-After": str(settings.retry_after_s)})
    missing = [
        shard for shard, groups in enumerate(results)
        if isinstance(groups, Exception) or digest_group(groups) is None
    ]
    if missing:
        return json_response(
            {"status": "unavailable", "reason": f"group {stream.GROUP!r} missing on shards "
             f"{missing} (being recreated)"},
            status=503, headers={"Retry-After": str(settings.retry_after_s)},
        )
    return json_response({"status": "ready", "shards": settings.shards,
                          "wait_aof": state.wait_aof})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this gateway's registry."""
    registry = request.app[METRICS]
    return web.Response(body=registry.exposition(),
                        headers={"Content-Type": registry.content_type})


def _get(summary: str, content_type: str = "application/json",
         unavailable: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {content_type: {
        "schema": {"type": "string"} if content_type.startswith("text") else {"type": "object"}
    }}}}
    if unavailable:
        responses["503"] = {"description": "not ready", "content": {"application/json": {
            "schema": {"type": "object"}}}}
    return {"get": {"summary": summary, "responses": responses}}


OPENAPI = {
    "/healthz": _get("Liveness: the process answers"),
    "/readyz": _get("Readiness: Redis reachable and consumer groups present", unavailable=True),
    "/metrics": _get("Prometheus metrics", "text/plain"),
}


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app[OPENAPI_PATHS].update(OPENAPI)
