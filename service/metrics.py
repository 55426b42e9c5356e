"""Prometheus metrics: protocol counters and latencies, plus trials by state and connected
workers read from the storage at scrape time (so every server process reports the same)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Metrics:
    """One app's metrics, in a registry of its own: two apps in one process (tests, embedding)
    count apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.claims = Counter(
            "hpsearch_claims", "Trials handed out to workers", ["study"], registry=self.registry
        )
        self.reports = Counter(
            "hpsearch_reports", "Epoch reports received", ["study"], registry=self.registry
        )
        self.stale_trials = Counter(
            "hpsearch_stale_trials_failed",
            "Trials failed for lack of heartbeats",
            ["study"],
            registry=self.registry,
        )
        self.retries = Counter(
            "hpsearch_retries",
            "Trials re-queued after a worker died or handed back",
            ["study"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hpsearch_request_seconds",
            "API latency by route",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # stateless
            self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StorageCollector(Collector):
    """Gauges computed from the storage when Prometheus scrapes."""

    def __init__(
        self, trial_counts: Callable[[], dict[str, dict[str, int]]], workers: Callable[[], int]
    ) -> None:
        self._trial_counts = trial_counts
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        trials = GaugeMetricFamily("hpsearch_trials", "Trials by state", labels=["study", "state"])
        for study, counts in self._trial_counts().items():
            for state, count in counts.items():
                trials.add_metric([study, state], count)
        yield trials
        yield GaugeMetricFamily(
            "hpsearch_connected_workers", "Workers seen within the lease", value=self._workers()
        )


def route_template(scope: dict[str, Any]) -> str | None:
    """The matched route's path template, e.g. /api/v1/trials/{trial_id}/report.

    FastAPI keeps an included route's own path in scope["route"] (/trials/{trial_id}/report,
    without the prefix it was included under), so the prefix is taken from the request path:
    the part before where the route's pattern matches."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    pattern = getattr(route, "path_regex", None)
    if template is None or pattern is None:
        return None
    path = scope["path"]
    if pattern.match(path):
        return template
    for i in range(1, len(path)):
        if path[i] == "/" and pattern.match(path[i:]):
            return path[:i] + template
    return None


class LatencyMiddleware:
    """Times every API request by its route template (pure ASGI: no per-request task)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            path = route_template(scope)
            if path is not None and path.startswith("/api/v1/"):
                elapsed = time.perf_counter() - start
                self.metrics.latency.labels(scope["method"], path).observe(elapsed)
