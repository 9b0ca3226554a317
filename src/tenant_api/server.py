"""Serving the app with uvicorn: ``tenant-api serve`` and ``make run`` (devserver) alike."""

from __future__ import annotations

import os
import signal
import sys

from tenant_api.settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, object]:
    from tenant_api.ops.logs import logging_config

    return {
        "host": settings.server.host,
        "port": settings.server.port,
        # Our access line (ops/metrics.py) replaces uvicorn's, which prints raw paths.
        "access_log": False,
        "log_config": logging_config(settings.observability),
        # Forwarded headers are the app's business (TRUSTED_PROXIES), whatever the
        # worker count: uvicorn's own handling stays off.
        "proxy_headers": False,
        # In-flight requests' bound; streams and sockets are drained before it starts
        # (ops/shutdown.py).
        "timeout_graceful_shutdown": settings.server.shutdown_seconds,
    }


def metrics_port(settings: Settings) -> None:
    """METRICS_PORT: the metrics on a port of their own, unauthenticated (bind it where
    only the scraper reaches). With several workers, the supervisor serves the sum."""
    if settings.observability.metrics_port:
        from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

        registry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        start_http_server(settings.observability.metrics_port, addr=settings.server.host, registry=registry)


def serve(settings: Settings) -> None:
    import uvicorn

    from tenant_api.app import create_app

    metrics_port(settings)
    # uvicorn raises the signal that stopped it again once it is done: a SIGTERM then
    # ends the process with status 0 rather than "killed".
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(create_app(settings), **uvicorn_options(settings))  # type: ignore[arg-type]
