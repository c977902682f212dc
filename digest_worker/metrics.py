"""Prometheus metrics of one worker process, on their own registry (several workers can live
in one test process), served on ``/metrics`` when a port is given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from agent.errors import ProcfleetError

PREFIX = "procfleet_worker"


class MetricsPortError(ProcfleetError):
    """``/metrics`` cannot be served on the port asked for (carries the port)."""

    def __init__(self, port: int, reason: str) -> None:
        self.port = port
        super().__init__(f"cannot serve /metrics on port {port}: {reason}")


class WorkerMetrics:
    """The worker's counters and gauges (names follow Prometheus conventions)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rows_inserted = Counter(
            f"{PREFIX}_rows_inserted_total", "Rows written to PostgreSQL", ["table"], registry=r)
        self.rows_duplicate = Counter(
            f"{PREFIX}_rows_duplicate_total",
            "Rows already present (redeliveries), absorbed by the unique keys", ["table"],
            registry=r)
        self.dead_lettered = Counter(
            f"{PREFIX}_entries_dead_lettered_total",
            "Stream entries moved to the dead-letter stream", ["reason"], registry=r)
        self.batches = Counter(f"{PREFIX}_batches_total", "Batches committed", registry=r)
        self.retries = Counter(
            f"{PREFIX}_retries_total", "Retries after a transport error", ["target"],
            registry=r)
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_seconds", "Time to write and acknowledge one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.batch_rows = Histogram(
            f"{PREFIX}_batch_rows", "Entries per batch",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000), registry=r)
        self.lag_seconds = Gauge(
            f"{PREFIX}_lag_seconds", "Age of the oldest entry not yet acknowledged", ["shard"],
            registry=r)
        self.backlog = Gauge(
            f"{PREFIX}_backlog_entries", "Entries in the stream from the oldest not acknowledged",
            ["shard"], registry=r)
        self.pending = Gauge(
            f"{PREFIX}_pending_entries", "Entries delivered to a consumer, not acknowledged",
            ["shard"], registry=r)
        self._server = None

    def observe_batch(self, rows: int, inserted: dict[str, int], duplicates: dict[str, int],
                      seconds: float) -> None:
        """Count one settled batch: rows per table, duplicates absorbed, size and time."""
        for table, n in inserted.items():
            self.rows_inserted.labels(table).inc(n)
        for table, n in duplicates.items():
            if n:
                self.rows_duplicate.labels(table).inc(n)
        self.batches.inc()
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``port`` from a daemon thread."""
        try:
            self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise MetricsPortError(port, exc.strerror or str(exc)) from exc

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
