"""The read side: the query API, the dashboard and the SQL behind them.

    routes.py         the query routes (``read`` scope) and the dashboard's files
    params.py         query parameters, parsed and validated once into small value objects
    window.py         the effective window of a query: its step, its bounds, which data serves it
    cells.py          SQL that yields per-step cells from the raw samples or the rollups
    top.py            ``GET /api/processes/top``
    series.py         ``GET /api/processes/{name}/series``
    servers.py        ``GET /api/servers`` and one host's latest processes
    database.py       the lazily created PostgreSQL pool (ingest runs without it)
    openapi_paths.py  the OpenAPI path items of these routes
    static/           the dashboard (plain HTML, CSS and JS)
    mcp/              ``POST /mcp``: these routes as MCP tools for LLM clients (its own map)

Imports of our code: the gateway's shared plumbing (``app_state``, ``errors``, ``guards``);
nothing of ``ingest/`` (``.importlinter`` checks it).
"""
