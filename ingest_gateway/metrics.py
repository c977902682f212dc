"""Prometheus metrics of one gateway app, in a registry of its own (several apps may live in
one process, e.g. in tests, without clashing on the global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ENQUEUE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class GatewayMetrics:
    """Every metric the gateway exports; names follow ``procfleet_gateway_*``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "procfleet_gateway_requests_total", "HTTP requests by route and status",
            ["route", "method", "status"], registry=r)
        self.reports = Counter(
            "procfleet_gateway_reports_total", "Reports taken, by outcome",
            ["route", "outcome"], registry=r)  # outcome: enqueued | duplicate
        self.messages = Counter(
            "procfleet_gateway_messages_enqueued_total", "Stream messages added", registry=r)
        self.received_bytes = Counter(
            "procfleet_gateway_received_bytes_total",
            "Request body bytes read (after gzip inflation)", registry=r)
        self.enqueued_bytes = Counter(
            "procfleet_gateway_enqueued_bytes_total", "Stream message payload bytes added",
            registry=r)
        self.contract_fallbacks = Counter(
            "procfleet_gateway_contract_fallbacks_total",
            "Report bodies the msgspec fast path refused and pydantic then decided, by outcome "
            "(accepted: a form only pydantic reads; a rising rate means the fast path fell "
            "behind the contract and every such report costs pydantic's CPU)",
            ["outcome"], registry=r)
        self.rejected = Counter(
            "procfleet_gateway_rejected_total", "Refused requests by reason", ["reason"],
            registry=r)
        self.enqueue_seconds = Histogram(
            "procfleet_gateway_enqueue_seconds",
            "Time to put one report's messages into Redis (dedupe check included)",
            buckets=ENQUEUE_BUCKETS_S, registry=r)
        self.in_flight = Gauge(
            "procfleet_gateway_requests_in_flight", "Requests being handled right now",
            registry=r)
        self.slow_clients = Counter(
            "procfleet_gateway_slow_clients_total",
            "Connections cut off for sending their request too slowly, by phase "
            "(headers: header_timeout_s, body: body_timeout_s)", ["phase"], registry=r)
        self.backlog = Gauge(
            "procfleet_gateway_backlog_messages",
            "Messages the digest group has not finished, per shard (refreshed every second)",
            ["shard"], registry=r)

    def count_fallback(self, outcome: str) -> None:
        self.contract_fallbacks.labels(outcome).inc()

    def set_backlog(self, shard: int, backlog: int) -> None:
        self.backlog.labels(str(shard)).set(backlog)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
