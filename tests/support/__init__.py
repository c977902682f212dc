"""Helpers shared by the test suites, imported as ``tests.support.<module>`` (never a conftest
module, never through ``sys.path``).

    polling.py   wait_until: poll a condition instead of sleeping a fixed time
    reports.py   report bodies as an agent sends them, and readers of the streams
    gateway.py   the gateway factory fixture (ingest + query routes, one token per scope)
    worker.py    stream messages as the gateway enqueues them, a burst worker, table counts
    processes.py process trees from /proc: descendants of a pid, waiting for pids to be gone
    redis_cluster.py  a real Redis / Valkey cluster on loopback ports, and its faults
    pg_replica.py     a streaming replica of an embedded PostgreSQL

``gateway.py``'s fixtures are registered for every suite by ``tests/conftest.py``
(``pytest_plugins``). Free ports come from ``procfleet.embedded.free_port``.
"""
