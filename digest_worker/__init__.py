"""Digest workers: Redis Streams → PostgreSQL, exactly-once rows from at-least-once streams.

    settings.py    WorkerSettings, read once from the environment
    redis_client.py  RESP2 clients (hiredis packing, raw stream replies), the shard count
    streams.py     the consumer side of the stream contract (group, reads, claims, acks,
                   following the shard count, forgetting departed consumers)
    cluster_streams.py  the same on a Redis Cluster: one command per shard, polled reads
    batch.py       a batch in hand: entries, decoded messages, entries set aside
    rows.py        decoded messages → table rows (points keyed by identity, identities)
    identity.py    identity keys (64-bit hash) and identities written once per batch
    timestamps.py  the epoch-seconds timestamptz codec of the worker's connections
    writer.py      one batch → one transaction (COPY / staging / unnest), poison isolation
    worker.py      the pipeline: read → write → settle, retries, shutdown
    partitions.py  daily partitions: ahead of time, default-partition rescue, retention
    monitor.py     run totals, the periodic summary line, per-shard gauges (reads only)
    rollup.py      per-minute / per-hour rollups for the query side (its own owner)
    compaction.py  storage upkeep: closed hours → compacted history, hot partitions emptied
    retention.py   retention per tier: partitions dropped by tier, identities expired
    metrics.py     Prometheus metrics (one batch's included) and /metrics
    supervisor.py  N worker processes on one host

Imports of our code: ``ingest_gateway.stream`` (the contract), ``agent.errors`` and
``agent.settings_loader`` only.
"""
