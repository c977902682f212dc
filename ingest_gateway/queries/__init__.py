"""The read side: SQL and query functions behind the query API (``routes_query``).

One module per concern: ``params`` (parse and validate query parameters), ``window`` (the
effective time window, its step and which data serves it), ``cells`` (SQL that yields
per-step cells from the raw samples or the rollups), ``top``, ``series`` and ``servers`` (the
endpoints' queries), ``database`` (the lazily created connection pool) and ``openapi_paths``
(the routes' OpenAPI description).
"""
