"""Every number an operator needs, in Prometheus form, on a private registry
(so several daemons can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.orders = Gauge("execd_orders", "Orders in the book by state", ["state"], registry=r)
        self.submits = Counter(
            "execd_submits_total", "Submit requests by outcome", ["outcome"], registry=r
        )
        self.rejections = Counter(
            "execd_rejections_total", "Refused orders by reason", ["reason"], registry=r
        )
        self.ack_latency = Histogram(
            "execd_order_ack_seconds", "Submit request to answer, by wait mode", ["wait"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.broker_requests = Counter(
            "execd_broker_requests_total", "Broker requests by endpoint and status",
            ["endpoint", "status"], registry=r,
        )
        self.broker_latency = Histogram(
            "execd_broker_request_seconds", "Broker request latency", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.limiter_wait = Histogram(
            "execd_limiter_wait_seconds", "Time waited for the shared request budget",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.limiter_remaining = Gauge(
            "execd_limiter_budget_remaining", "Requests the limiter would let through now",
            registry=r,
        )
        self.actor_restarts = Counter(
            "execd_actor_restarts_total", "Actor crashes followed by a restart", ["actor"],
            registry=r,
        )
        self.actor_up = Gauge("execd_actor_up", "1 while the actor runs", ["actor"], registry=r)
        self.trading_state = Gauge(
            "execd_trading_state", "1 for the current trading state", ["state"], registry=r
        )
        self.reconcile_runs = Counter(
            "execd_reconcile_runs_total", "Reconciliations by result", ["result"], registry=r
        )
        self.reconcile_mismatches = Counter(
            "execd_reconcile_mismatches_total", "Symbols found mismatched (confirmed)",
            registry=r,
        )
        self.reconcile_last_success = Gauge(
            "execd_reconcile_last_success_timestamp_seconds", "Last clean reconciliation",
            registry=r,
        )
        self.poll_last_success = Gauge(
            "execd_poll_last_success_timestamp_seconds", "Last completed poll", registry=r
        )
        self.poll_lookups = Counter(
            "execd_poll_lookups_total", "Single-order look-ups made by the poller", registry=r
        )
        self.intake_connections = Gauge(
            "execd_intake_connections", "Open client connections", registry=r
        )
        self.intake_errors = Counter(
            "execd_intake_errors_total", "Error answers by code", ["code"], registry=r
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
