"""The status line of `procfleet up` sums counters from the parts' /metrics pages."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from procfleet.stack import _sum


def exposition() -> str:
    registry = CollectorRegistry()
    reports = Counter("procfleet_gateway_reports_total", "r", ["route", "outcome"],
                      registry=registry)
    reports.labels("/v1/reports", "enqueued").inc(7)
    reports.labels("/v1/commands", "duplicate").inc(2)
    backlog = Gauge("procfleet_gateway_backlog_messages", "b", ["shard"], registry=registry)
    backlog.labels("0").set(5)
    backlog.labels("1").set(1.5)
    # A metric whose name starts like another must not be counted with it.
    Counter("procfleet_gateway_reports_total_bytes", "x", registry=registry).inc(1000)
    return generate_latest(registry).decode()


def test_sums_every_label_set_of_one_metric_and_nothing_else():
    text = exposition()
    assert _sum(text, "procfleet_gateway_reports_total") == 9
    assert _sum(text, "procfleet_gateway_backlog_messages") == 6.5


def test_a_missing_metric_or_an_unreadable_page_counts_as_zero():
    assert _sum(exposition(), "procfleet_worker_rows_inserted_total") == 0
    assert _sum("", "procfleet_gateway_reports_total") == 0
    assert _sum("procfleet_gateway_reports_total{oops 12\n",
                "procfleet_gateway_reports_total") == 0
