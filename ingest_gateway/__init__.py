"""The ingest gateway: one aiohttp service for the write path and the read path.

    stream.py      THE CONTRACT with the digest workers: Redis keys, sharding, message encoding
                   (the one module another package may import)
    ingest/        the write path: validate a report, enqueue one message per process
    query/         the read path: the query API, the dashboard and their SQL

The HTTP plumbing both paths share sits at this level:

    settings.py    GatewaySettings, read once from the environment
    app.py         ``create_app``: state, Redis clients, every route family (listed, not found)
    server.py      the listener (optionally TLS), signals, a graceful drain
    app_state.py   shared state under typed ``web.AppKey``s
    middleware.py  the error/metrics middleware and the access log line
    guards.py      token and scope checks, rate limits, for every route
    auth.py        bearer tokens with scopes (hashes in Redis)
    enrollment.py  host enrollment: one host token per server_id (``/v1/enroll``, ``host reset``)
    ratelimit.py   per-token token buckets
    errors.py      the gateway's error tree and its JSON body
    metrics.py     ``procfleet_gateway_*`` metrics
    routes_ops.py  ``/healthz``, ``/readyz``, ``/metrics``
    openapi.py     ``/api/openapi.json``

Imports of our code: ``agent`` only (the contract, parsers, scrubber, error root).
"""
