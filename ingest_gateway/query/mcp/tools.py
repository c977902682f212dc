"""The MCP tools: one per query route, with typed, bounded arguments an LLM can fill in.

Bounds are the API's own (ingest_gateway/query/params.py): the SDK checks them against the
JSON schema before a call reaches the API, so a bad argument is a tool error naming the
argument; anything the schema cannot say (from after to, a window over 168 hours) is refused
by the API and comes back as a tool error carrying the API's field and reason. Answers are the
API's JSON unchanged, plus a ``units`` object saying what each number is measured in.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import Field

from ingest_gateway.query.mcp.api import (
    NEW_PATH,
    SEARCH_PATH,
    SERVERS_PATH,
    TOP_PATH,
    ApiError,
    Params,
    QueryApi,
)

log = logging.getLogger(__name__)

SERVER_NAME = "procfleet"
INSTRUCTIONS = (
    "procfleet knows which processes use CPU and memory on a fleet of servers: per process "
    "name (process_exporter groups, or OS processes from ps/tasklist), per server, over time, "
    "for up to 168 hours back. CPU is in percent of one core (100 = one core fully busy), "
    "summed over the selected servers; memory is resident memory in MiB. Start with "
    "list_servers to learn the server ids, then top_processes, process_series or "
    "host_processes; search_processes finds where a process runs or ran by its name or "
    "command line, new_processes lists what started running on servers since a moment.")

CPU_PERCENT = "percent of one CPU core (100 = one core fully busy)"
UNITS_TOP = {
    "avg_cpu_percent": f"{CPU_PERCENT}, averaged over the window, summed over servers",
    "peak_cpu_percent": f"{CPU_PERCENT}, the busiest step (step_s), summed over servers",
    "avg_memory_mb": "MiB of resident memory, averaged over the window, summed over servers",
    "peak_memory_mb": "MiB of resident memory, the highest step, summed over servers",
    "avg_num_procs": "processes, averaged over the window",
    "servers": "servers where the name ran in the window",
    "time_range_hours": "hours", "step_s": "seconds", "from": "UTC", "to": "UTC",
}
UNITS_SERIES = {
    "value": f"cpu: {CPU_PERCENT}, memory: MiB resident; the step's average, summed over "
             "servers; null = no samples in that step",
    "ts": "UTC start of the step", "step_s": "seconds",
}
UNITS_SERVERS = {
    "stale": "true when the server has not reported for stale_after_s seconds",
    "stale_after_s": "seconds", "first_seen_at": "UTC", "last_seen_at": "UTC",
}
UNITS_HOST = {
    "cpu_percent": f"{CPU_PERCENT}, over the interval before the sample (null: no rate yet)",
    "cpu_seconds_total": "seconds of CPU since the process started (a cumulative counter)",
    "memory_mb": "MiB of resident memory", "vsz_mb": "MiB of virtual memory",
    "memory_percent": "percent of the host's RAM, as ps reports it", "ts": "UTC",
    "start_time": "UTC (null: unknown)",
}
UNITS_SEARCH = {
    "start_time": "UTC (null: unknown)", "first_seen": "UTC, the process's first sample",
    "last_seen": "UTC, its last sample (at most about a minute behind)", "from": "UTC",
    "to": "UTC", "truncated": "true when more processes matched than limit",
}
UNITS_NEW = {
    "servers": "servers where the name is new (not seen there before since)",
    "first_seen": "UTC, the earliest first sample among those servers", "since": "UTC",
    "until": "UTC", "truncated": "true when more names were new than limit",
}

Metric = Annotated[Literal["cpu", "memory"], Field(
    description="cpu: CPU time used (percent of one core); memory: resident memory (MiB)")]
Source = Annotated[Literal["groups", "processes"] | None, Field(
    description="groups: process_exporter groups (named by its config); processes: OS "
                "processes from ps/tasklist; omit to use groups when there are any")]
Hours = Annotated[int, Field(ge=1, le=168,
                             description="window length in hours, ending now (1-168)")]
ServerIds = Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]] | None, Field(
    max_length=1000, description="only these server ids (see list_servers); omit for all")]
Timestamp = Annotated[str | None, Field(
    max_length=40, description="RFC 3339 with a time zone, e.g. 2026-01-01T10:00:00Z; give "
                               "from_time and to_time together instead of hours")]


def with_units(answer: dict[str, Any], units: dict[str, str]) -> dict[str, Any]:
    return {**answer, "units": units}


def window_params(hours: int, from_time: str | None, to_time: str | None) -> Params:
    if from_time is None and to_time is None:
        return [("hours", str(hours))]
    # One of the two alone: the API names the missing one.
    return [(name, value) for name, value in (("from", from_time), ("to", to_time))
            if value is not None]


def server_params(server_ids: list[str] | None) -> Params:
    return [("server_ids[]", server_id) for server_id in server_ids or []]


async def _get(api: QueryApi, path: str, params: Params) -> dict[str, Any]:
    from mcp.server.mcpserver.exceptions import ToolError

    started_s = time.monotonic()
    status: int | str = "error"  # an unexpected exception (the SDK reports it as a tool error)
    try:
        answer = await api.get(path, params)
        status = 200
        return answer
    except ApiError as exc:
        status = exc.status
        # The API's reason, as a tool error the model can act on (never a crash).
        raise ToolError(f"procfleet API refused the query: {exc}") from None
    finally:  # one line per tool call: which query, its outcome, how long
        log.info("mcp query", extra={"kv": {
            "path": path, "status": status,
            "query_ms": round((time.monotonic() - started_s) * 1000, 2)}})


def build_server(api: QueryApi):
    """An ``mcp`` ``MCPServer`` whose tools answer through ``api``."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    server = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS)
    read_only = ToolAnnotations(readOnlyHint=True, openWorldHint=False)

    async def top_processes(
        metric: Metric = "cpu",
        hours: Hours = 1,
        from_time: Timestamp = None,
        to_time: Timestamp = None,
        server_ids: ServerIds = None,
        source: Source = None,
        limit: Annotated[int, Field(ge=1, le=50, description="how many names (1-50)")] = 10,
    ) -> dict[str, Any]:
        params = [("metric", metric), ("limit", str(limit)),
                  *window_params(hours, from_time, to_time), *server_params(server_ids)]
        if source is not None:
            params.append(("source", source))
        return with_units(await _get(api, TOP_PATH, params), UNITS_TOP)

    async def process_series(
        name: Annotated[str, Field(min_length=1, max_length=256, description=(
            "a process name as top_processes lists it (a group name or an OS process name)"))],
        metric: Metric = "cpu",
        hours: Hours = 1,
        from_time: Timestamp = None,
        to_time: Timestamp = None,
        step_s: Annotated[int | None, Field(ge=60, le=604800, multiple_of=60, description=(
            "seconds per point, a multiple of 60; omit for a few hundred points"))] = None,
        server_ids: ServerIds = None,
        source: Source = None,
    ) -> dict[str, Any]:
        params = [("metric", metric), *window_params(hours, from_time, to_time),
                  *server_params(server_ids)]
        if step_s is not None:
            params.append(("step", str(step_s)))
        if source is not None:
            params.append(("source", source))
        path = f"/api/processes/{quote(name, safe='')}/series"
        return with_units(await _get(api, path, params), UNITS_SERIES)

    async def list_servers() -> dict[str, Any]:
        return with_units(await _get(api, SERVERS_PATH, []), UNITS_SERVERS)

    async def host_processes(
        server_id: Annotated[str, Field(min_length=1, max_length=128,
                                        description="a server id from list_servers")],
        sort: Annotated[Literal["cpu", "memory", "pid", "name"], Field(
            description="sort key")] = "cpu",
        order: Annotated[Literal["asc", "desc"] | None, Field(
            description="omit for desc on cpu/memory, asc on pid/name")] = None,
        limit: Annotated[int, Field(ge=1, le=5000, description="how many rows (1-5000)")] = 50,
        source: Source = None,
    ) -> dict[str, Any]:
        params = [("sort", sort), ("limit", str(limit))]
        if order is not None:
            params.append(("order", order))
        if source is not None:
            params.append(("source", source))
        path = f"/api/servers/{quote(server_id, safe='')}/processes"
        return with_units(await _get(api, path, params), UNITS_HOST)

    server.add_tool(top_processes, annotations=read_only, description=(
        "The process names that used the most CPU or memory over a time window, across the "
        "fleet or on chosen servers: average and peak CPU (percent of one core), average and "
        "peak resident memory (MiB), average process count and the number of servers."))
    server.add_tool(process_series, annotations=read_only, description=(
        "One process name's CPU (percent of one core) or resident memory (MiB) over time, one "
        "point per step, summed over the selected servers: use it to see growth, spikes and "
        "when something started."))
    server.add_tool(list_servers, annotations=read_only, description=(
        "Every server that has reported: id, hostname, OS, agent version, first and last "
        "report time, and whether it is stale (silent for more than stale_after_s seconds)."))
    server.add_tool(host_processes, annotations=read_only, description=(
        "What one server runs now: its newest collection of processes (pid, user, command "
        "line as stored, state, start time) or groups, with CPU over the last interval and "
        "resident memory, sorted."))
    async def search_processes(
        query: Annotated[str, Field(min_length=1, max_length=256, description=(
            "text to find in process names and command lines: literal (no wildcards), "
            "case-insensitive"))],
        hours: Hours = 1,
        from_time: Timestamp = None,
        to_time: Timestamp = None,
        server_ids: ServerIds = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="at most this many "
                                                               "processes (1-1000)")] = 100,
    ) -> dict[str, Any]:
        params = [("q", query), ("limit", str(limit)),
                  *window_params(hours, from_time, to_time), *server_params(server_ids)]
        return with_units(await _get(api, SEARCH_PATH, params), UNITS_SEARCH)

    async def new_processes(
        since: Annotated[str, Field(min_length=1, max_length=40, description=(
            "RFC 3339 with a time zone, e.g. 2026-01-01T10:00:00Z: names first seen on a "
            "server after this moment and never before it there"))],
        until: Annotated[str | None, Field(max_length=40, description=(
            "RFC 3339 with a time zone, after since; omit for now"))] = None,
        server_ids: ServerIds = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="at most this many names "
                                                               "(1-1000)")] = 100,
    ) -> dict[str, Any]:
        params = [("since", since), ("limit", str(limit)), *server_params(server_ids)]
        if until is not None:
            params.append(("until", until))
        return with_units(await _get(api, NEW_PATH, params), UNITS_NEW)

    server.add_tool(search_processes, annotations=read_only, description=(
        "Where a process runs or ran: every OS process (server, hostname, pid, start time, "
        "name, command line, user, first and last seen) whose name or command line contains "
        "the text, alive at some point in the window, newest first. Use it for 'where is X "
        "running' or 'was X running yesterday'."))
    server.add_tool(new_processes, annotations=read_only, description=(
        "Process names that started running on servers since a moment and had never run on "
        "those servers before it (restarts of known names are not new), with how many servers, "
        "when first and an example command line, most servers first: 'what is new on the "
        "fleet since yesterday'. until defaults to now."))
    return server
