"""The request observer counts in the process and writes its series at each flush
(tenant_api.ops.metrics.RequestObserver): what a scrape then shows must be exactly what
prometheus-client's own Counter.inc and Histogram.observe would have shown."""

import asyncio
import uuid

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from tenant_api.ops.metrics import _LATENCY_BUCKETS, RequestObserver

DURATIONS = [0.0, 0.004, 0.005, 0.0051, 0.02, 0.2, 0.25, 1.0, 29.9, 30.0, 45.0]


def _scope(route: str) -> dict:
    return {"type": "http", "method": "GET", "path_template": route, "headers": [], "state": {}}


def _samples(registry: CollectorRegistry, name: str, route: str) -> dict[tuple, float]:
    out = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.startswith(name) and sample.labels.get("route") == route and \
                    not sample.name.endswith("_created"):
                out[(sample.name, sample.labels.get("le"))] = sample.value
    return out


def test_a_flush_writes_what_observe_would_have():
    route = f"/test/{uuid.uuid4().hex}"
    observer = RequestObserver(engine=None, access=False)
    for d in DURATIONS:
        observer.request(_scope(route), 200, d)
    observer.request(_scope(route), 404, 0.01)
    # nothing reaches the series before the flush
    assert REGISTRY.get_sample_value("tenant_api_http_requests_total",
                                     {"method": "GET", "route": route, "status": "200"}) is None
    observer.flush()
    assert REGISTRY.get_sample_value("tenant_api_http_requests_total",
                                     {"method": "GET", "route": route, "status": "200"}) == len(DURATIONS)
    assert REGISTRY.get_sample_value("tenant_api_http_requests_total",
                                     {"method": "GET", "route": route, "status": "404"}) == 1

    reference = CollectorRegistry()
    histogram = Histogram("tenant_api_http_request_duration_seconds", "reference", ["method", "route"],
                          buckets=_LATENCY_BUCKETS, registry=reference)
    for d in [*DURATIONS, 0.01]:
        histogram.labels("GET", route).observe(d)
    name = "tenant_api_http_request_duration_seconds"
    assert _samples(REGISTRY, name, route) == _samples(reference, name, route)

    # a second flush adds only what came since
    observer.request(_scope(route), 200, 0.3)
    observer.flush()
    observer.flush()
    assert REGISTRY.get_sample_value("tenant_api_http_requests_total",
                                     {"method": "GET", "route": route, "status": "200"}) == len(DURATIONS) + 1


def test_while_serving_the_counts_reach_the_series_within_a_flush_interval():
    route = f"/test/{uuid.uuid4().hex}"
    observer = RequestObserver(engine=None, access=False, flush_seconds=0.05)
    labels = {"method": "GET", "route": route, "status": "200"}

    async def serve() -> None:
        async with observer.running(None):
            observer.request(_scope(route), 200, 0.01)
            await asyncio.sleep(0.2)
            assert REGISTRY.get_sample_value("tenant_api_http_requests_total", labels) == 1
            observer.request(_scope(route), 200, 0.01)  # flushed at the end of the lifespan
        assert REGISTRY.get_sample_value("tenant_api_http_requests_total", labels) == 2

    asyncio.run(serve())
