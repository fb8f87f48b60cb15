"""Per key: requests by status, and latency (on the daemon's private registry; made once
per registry, so a restarted gateway counts on)."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Histogram

from execd.obs.metrics import LATENCY_BUCKETS


class GatewayMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.requests = Counter("execd_gateway_requests_total", "Alpaca gateway requests by "
                                "key and HTTP status", ["key", "status"], registry=r)
        self.seconds = Histogram("execd_gateway_request_seconds", "Alpaca gateway request "
                                 "latency by key", ["key"], buckets=LATENCY_BUCKETS, registry=r)


_MADE: WeakKeyDictionary[CollectorRegistry, GatewayMetrics] = WeakKeyDictionary()


def of(registry: CollectorRegistry) -> GatewayMetrics:
    made = _MADE.get(registry)
    if made is None:
        made = _MADE[registry] = GatewayMetrics(registry)
    return made
