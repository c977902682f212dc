"""What every request goes through: the error/metrics middleware and the access log line."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ingest_gateway.app_state import LOG_KV, METRICS, STATE
from ingest_gateway.errors import GatewayError, http_exception_response, json_response

log = logging.getLogger(__name__)
access_log = logging.getLogger("ingest_gateway.access")


class AccessLogger(AbstractAccessLogger):
    """One logfmt/JSON line per request: method, path, status, duration and what the handler
    noted (report_id, token id, refusal reason). Never the token or the body."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        kv = {"method": request.method, "path": request.path, "status": response.status,
              "duration_ms": round(time * 1000, 2), "remote": request.remote,
              "bytes_out": response.body_length}
        kv.update(request.get(LOG_KV) or {})
        self.logger.info("request", extra={"kv": kv})


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """Our errors → JSON bodies; every request counted by route and status."""
    request[LOG_KV] = {}
    metrics, state = request.app[METRICS], request.app[STATE]
    deadlines = state.header_deadlines
    if deadlines is not None:  # the headers are in: no header deadline while this runs
        deadlines.request_started(request.transport)
    state.in_flight += 1
    metrics.in_flight.inc()
    try:
        response = await handler(request)
    except GatewayError as exc:
        metrics.rejected.labels(exc.kind).inc()
        state.totals["rejected"] += 1
        request[LOG_KV]["error"] = exc.kind
        response = exc.response()
        if exc.status == 408:  # a body still dripping in: do not wait for the rest
            metrics.slow_clients.labels("body").inc()
            response.force_close()
    except web.HTTPException as exc:
        response = http_exception_response(exc)
    except Exception:
        log.exception("unhandled error", extra={"kv": {"path": request.path}})
        response = json_response({"error": {"status": 500, "field": "", "reason":
                                            "internal error"}}, status=500)
    finally:
        state.in_flight -= 1
        metrics.in_flight.dec()
        if deadlines is not None:
            deadlines.request_finished(request.transport)
    metrics.requests.labels(_route_label(request), request.method, str(response.status)).inc()
    return response
