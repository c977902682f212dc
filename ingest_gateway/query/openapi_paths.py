"""OpenAPI path items of the query API and the dashboard (merged into ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from ingest_gateway.query.params import (
    DEFAULT_LIMIT,
    MAX_HOURS,
    MAX_LIMIT,
    MAX_POINTS,
    MIN_HOURS,
)

AGGREGATION = (
    "How values aggregate. CPU comes from cumulative counters: per series (groups: "
    "server_id + name, user+system seconds; OS processes: server_id + pid + start_time) the "
    "delta to the previous sample (LAG), a counter that went down counts its new value "
    "(reset), a gap over 120 s yields no rate, and only then are series summed per name. "
    "avg_cpu_percent = 100 x CPU-seconds used in the window / window seconds, summed over "
    "servers (the average number of cores in use; 100 = one core). peak_cpu_percent = the "
    "highest step average (1-minute steps for windows up to 6 h, 1-hour steps beyond), "
    "summed over servers. avg_memory_mb and avg_num_procs are time averages over the whole "
    "window (a name present for half the window counts half), summed over servers. "
    "peak_memory_mb = the highest step's sum over servers of each server's peak resident "
    "memory (per server: the sum over its processes of each one's highest sample). MB = 2^20 "
    "bytes. servers = selected (known) servers where the name had samples. Windows: widened "
    "to whole steps, then cut at the data's horizon: the rollup watermark (a whole minute, "
    "normally 1-2 minutes ago) when the rollups serve the query, now when the raw samples do "
    "(rollup missing or more than 10 minutes behind). The response's from/to are the "
    "effective window; every average divides by it.")

_ERROR = {"$ref": "#/components/schemas/Error"}
_SECURITY = [{"bearer": []}]


def _param(name: str, description: str, schema: dict[str, Any], *, where: str = "query",
           required: bool = False, explode: bool | None = None) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": where, "description": description,
                             "required": required, "schema": schema}
    if explode is not None:
        param["explode"] = explode
    return param


_SERVER_IDS = _param("server_ids[]", "Servers to include (repeatable, or comma-separated); "
                     "absent = every server. Unknown ids select nothing (empty result).",
                     {"type": "array", "items": {"type": "string", "maxLength": 128},
                      "maxItems": 1000}, explode=True)
_METRIC = _param("metric", "What to rank or plot.", {"enum": ["cpu", "memory"],
                                                        "default": "cpu"})
_HOURS = _param("hours", "Window ending now (ignored when from/to are given).",
                {"type": "integer", "minimum": MIN_HOURS, "maximum": MAX_HOURS, "default": 1})
_FROM = _param("from", "Window start, RFC 3339 with a time zone (with `to`).",
               {"type": "string", "format": "date-time"})
_TO = _param("to", "Window end, RFC 3339 (with `from`; at most 168 h after it).",
             {"type": "string", "format": "date-time"})
_SOURCE = _param("source", "process_exporter groups or ps/tasklist processes by name; "
                 "default: groups when any group has samples in the window, else processes.",
                 {"enum": ["groups", "processes"]})
_PATH = _param("path", "Which data answers: `raw` computes the rates from the per-process "
               "samples (hot rows and compacted history alike, up to the current second), "
               "`rollup` reads the minute/hour rollups; default: the rollups when they reach "
               "the window's end. Both give the same numbers; `raw` is for checks and tests.",
               {"enum": ["raw", "rollup"]})

_NUMBER = {"type": "number"}
TOP_RESPONSE = {
    "type": "object",
    "required": ["metric", "time_range_hours", "from", "to", "source", "processes"],
    "properties": {
        "metric": {"enum": ["cpu", "memory"]},
        "time_range_hours": {**_NUMBER, "description": "length of the effective window"},
        "from": {"type": "string", "format": "date-time"},
        "to": {"type": "string", "format": "date-time"},
        "source": {"enum": ["groups", "processes"]},
        "step_s": {"type": "integer", "description": "step of the peaks: 60 or 3600"},
        "path": {"enum": ["raw", "rollup"], "description": "what served the query"},
        "processes": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "avg_cpu_percent", "peak_cpu_percent", "avg_memory_mb",
                         "peak_memory_mb", "avg_num_procs", "servers"],
            "properties": {
                "name": {"type": "string"},
                "avg_cpu_percent": {**_NUMBER, "description": "100 = one core on average"},
                "peak_cpu_percent": {**_NUMBER, "description": "highest step average"},
                "avg_memory_mb": {**_NUMBER, "description": "time average, MiB"},
                "peak_memory_mb": {**_NUMBER, "description": "highest step peak, MiB"},
                "avg_num_procs": {**_NUMBER, "description": "time average"},
                "servers": {"type": "integer"},
            }}},
    },
}
SERIES_RESPONSE = {
    "type": "object",
    "required": ["name", "metric", "unit", "step_s", "from", "to", "points"],
    "properties": {
        "name": {"type": "string"}, "metric": {"enum": ["cpu", "memory"]},
        "unit": {"enum": ["percent", "MB"]}, "source": {"enum": ["groups", "processes"]},
        "step_s": {"type": "integer"}, "from": {"type": "string", "format": "date-time"},
        "to": {"type": "string", "format": "date-time"}, "path": {"enum": ["raw", "rollup"]},
        "points": {"type": "array", "items": {"type": "object", "properties": {
            "ts": {"type": "string", "format": "date-time"},
            "value": {"type": ["number", "null"],
                      "description": "step average summed over servers; null = no samples"},
        }}},
    },
}
SERVERS_RESPONSE = {
    "type": "object",
    "properties": {
        "stale_after_s": {"type": "integer"},
        "servers": {"type": "array", "items": {"type": "object", "properties": {
            "server_id": {"type": "string"}, "hostname": {"type": ["string", "null"]},
            "os_type": {"type": ["string", "null"]}, "os_version": {"type": ["string", "null"]},
            "agent_version": {"type": ["string", "null"]},
            "first_seen_at": {"type": "string", "format": "date-time"},
            "last_seen_at": {"type": "string", "format": "date-time"},
            "stale": {"type": "boolean",
                      "description": "nothing received for stale_after_s seconds"},
        }}},
    },
}
SNAPSHOT_RESPONSE = {
    "type": "object",
    "properties": {
        "server_id": {"type": "string"}, "source": {"enum": ["groups", "processes"]},
        "ts": {"type": ["string", "null"], "format": "date-time"},
        "sort": {"type": "string"}, "order": {"type": "string"}, "total": {"type": "integer"},
        "processes": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "pid": {"type": "integer"},
            "cpu_percent": {"type": ["number", "null"],
                            "description": "rate over the previous sample; 100 = one core"},
            "memory_mb": {"type": ["number", "null"]},
            "cpu_seconds_total": {"type": ["number", "null"]},
        }}},
    },
}


_DATE_TIME = {"type": "string", "format": "date-time"}
_INVENTORY_LIMIT = _param("limit", "At most this many rows (truncated says when more matched).",
                          {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
SEARCH_RESPONSE = {
    "type": "object",
    "required": ["q", "from", "to", "truncated", "processes"],
    "properties": {
        "q": {"type": "string"}, "from": _DATE_TIME, "to": _DATE_TIME,
        "truncated": {"type": "boolean", "description": "more processes matched than limit"},
        "processes": {"type": "array", "items": {"type": "object", "properties": {
            "server_id": {"type": "string"}, "hostname": {"type": ["string", "null"]},
            "pid": {"type": "integer"},
            "start_time": {"type": ["string", "null"], "format": "date-time",
                           "description": "null: unknown"},
            "name": {"type": "string"}, "command": {"type": "string"},
            "user": {"type": ["string", "null"]},
            "first_seen": {**_DATE_TIME, "description": "first sample of this process"},
            "last_seen": {**_DATE_TIME, "description": "last sample (at most ~1 min behind)"},
        }}},
    },
}
NEW_RESPONSE = {
    "type": "object",
    "required": ["since", "until", "truncated", "names"],
    "properties": {
        "since": _DATE_TIME, "until": _DATE_TIME, "truncated": {"type": "boolean"},
        "names": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"},
            "servers": {"type": "integer", "description": "servers where the name is new"},
            "first_seen": {**_DATE_TIME, "description": "earliest start among them"},
            "example_command": {"type": "string",
                                "description": "the command line of that earliest process"},
        }}},
    },
}


def _responses(schema: dict[str, Any], *extra: str) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "400": {"description": "a parameter is invalid (field = the parameter)",
                "content": {"application/json": {"schema": _ERROR}}},
        "401": {"description": "missing or invalid token",
                "content": {"application/json": {"schema": _ERROR}}},
        "403": {"description": "token without the read scope",
                "content": {"application/json": {"schema": _ERROR}}},
        "503": {"description": "PostgreSQL unreachable (Retry-After)",
                "content": {"application/json": {"schema": _ERROR}}},
    }
    for status in extra:
        responses[status] = {"description": "not found",
                             "content": {"application/json": {"schema": _ERROR}}}
    return responses


PATHS: dict[str, Any] = {
    "/api/processes/top": {"get": {
        "summary": "Top process names by CPU or memory over a window",
        "description": AGGREGATION, "security": _SECURITY,
        "parameters": [_SERVER_IDS, _METRIC,
                       _param("limit", "How many names.", {"type": "integer", "minimum": 1,
                              "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
                       _HOURS, _FROM, _TO, _SOURCE, _PATH],
        "responses": _responses(TOP_RESPONSE),
    }},
    "/api/processes/search": {"get": {
        "summary": "Where a process runs or ran: processes whose name or command line "
                   "contains q, live in the window",
        "description": "q is a literal text matched case-insensitively (% and _ are not "
                       "wildcards). A process is live in [from, to] when its first sample is "
                       "at or before to and its last at or after from. Newest last_seen "
                       "first; from the process inventory (one row per OS process).",
        "security": _SECURITY,
        "parameters": [_param("q", "Text to find in the name or the command line (1-256 "
                              "characters).", {"type": "string", "minLength": 1,
                                               "maxLength": 256}, required=True),
                       _HOURS, _FROM, _TO, _SERVER_IDS, _INVENTORY_LIMIT],
        "responses": _responses(SEARCH_RESPONSE),
    }},
    "/api/processes/new": {"get": {
        "summary": "Process names new on servers since a moment, most servers first",
        "description": "A name is new on a server when it was first seen there after since "
                       "(and at or before until) and never at or before since in the retained "
                       "history: a name restarting on a server that already ran it is not "
                       "new. servers counts the servers where it is new.",
        "security": _SECURITY,
        "parameters": [_param("since", "RFC 3339 with a time zone.", _DATE_TIME,
                              required=True),
                       _param("until", "RFC 3339; default now; after since.", _DATE_TIME),
                       _SERVER_IDS, _INVENTORY_LIMIT],
        "responses": _responses(NEW_RESPONSE),
    }},
    "/api/processes/{name}/series": {"get": {
        "summary": "One process name over time (chart data)",
        "description": "Each point is the step's average, summed over the selected servers. "
                       + AGGREGATION, "security": _SECURITY,
        "parameters": [_param("name", "Process or group name.", {"type": "string"},
                              where="path", required=True),
                       _METRIC, _HOURS, _FROM, _TO, _SERVER_IDS, _SOURCE, _PATH,
                       _param("step", f"Seconds per point, a multiple of 60 (at most "
                              f"{MAX_POINTS} points); default from the window: 60 up to 6 h, "
                              f"300 up to 24 h, 900 up to 72 h, else 3600.",
                              {"type": "integer", "minimum": 60})],
        "responses": _responses(SERIES_RESPONSE),
    }},
    "/api/servers": {"get": {
        "summary": "Known servers with their metadata and a stale flag",
        "security": _SECURITY, "responses": _responses(SERVERS_RESPONSE),
    }},
    "/api/servers/{server_id}/processes": {"get": {
        "summary": "The latest snapshot of one host, like top",
        "security": _SECURITY,
        "parameters": [
            _param("server_id", "The host.", {"type": "string"}, where="path", required=True),
            _param("sort", "Sort key.", {"enum": ["cpu", "memory", "pid", "name"],
                                         "default": "cpu"}),
            _param("order", "Default desc for cpu/memory, asc for pid/name.",
                   {"enum": ["asc", "desc"]}),
            _param("limit", "At most this many rows.", {"type": "integer", "minimum": 1,
                                                        "maximum": 5000, "default": 200}),
            _SOURCE],
        "responses": _responses(SNAPSHOT_RESPONSE, "404"),
    }},
    "/api/database": {"get": {
        "summary": "The query database: primary or streaming replica, and the replica's lag",
        "description": "lag_s is 0 when the replica replayed all it received, else the age of "
                       "its last replayed transaction; streaming says whether it is connected "
                       "to its primary now.",
        "security": _SECURITY,
        "responses": _responses({"type": "object", "properties": {
            "role": {"enum": ["primary", "replica"]},
            "lag_s": {"type": ["number", "null"]},
            "streaming": {"type": ["boolean", "null"]},
            "receive_lsn": {"type": ["string", "null"]},
            "replay_lsn": {"type": ["string", "null"]}}}),
    }},
    "/": {"get": {
        "summary": "The dashboard (HTML; asks for a read token, kept in localStorage, or "
                   "takes it from the #token= fragment)",
        "responses": {"200": {"description": "HTML page",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
    }},
    "/static/{file}": {"get": {
        "summary": "The dashboard's scripts and style sheet",
        "parameters": [_param("file", "app.js, chart.js, inventory.js or app.css",
                              {"enum": ["app.js", "chart.js", "inventory.js", "app.css"]},
                              where="path",
                              required=True)],
        "responses": {"200": {"description": "the file"},
                      "404": {"description": "no such file"}},
    }},
}
