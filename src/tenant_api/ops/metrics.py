"""Prometheus metrics (prometheus-client), and the access log beside them.

Where they are served: ``GET /metrics`` on the API's port, with ``Authorization: Bearer
<METRICS_TOKEN>`` (404 while METRICS_TOKEN is unset), and, with METRICS_PORT, without
a credential on a port of its own (bind it where only the scraper reaches it). The
scheduler process serves its own series on its METRICS_PORT. With WORKERS>1,
``tenant-api serve`` gives the workers a shared PROMETHEUS_MULTIPROC_DIR, so any worker
answers for all of them (prometheus-client's multiprocess mode).

Series (all prefixed ``tenant_api_``):
  http_requests_total{method,route,status}       every answered request, by route template
  http_request_duration_seconds{method,route}    latency histogram
  db_pool_connections{state}                     in_use, idle, waiting (requests queued for one)
  usage_records_written_total / _dropped_total   the usage recorder (audit/usage.py)
  scheduler_fires_total, scheduler_lateness_seconds, scheduler_errors_total
  mails_total{outcome}                           invite mails: sent, retry, failed
  sse_streams_open, robot_sockets_open           live connections
  runner_claims_waiting                          long-polling claims
  rate_limited_total{quota}, rate_limit_store_errors_total
  retention_purged_total{kind}
  webhook_deliveries_total{outcome}, webhook_delivery_duration_seconds   the delivery worker
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from tenant_api.errors import ProblemError
from tenant_api.routing import Routes

access_log = logging.getLogger("tenant_api.access")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter("tenant_api_http_requests_total", "Requests answered, by route template.",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("tenant_api_http_request_duration_seconds", "Time to the end of the response.",
                         ["method", "route"], buckets=_LATENCY_BUCKETS)
DB_POOL = Gauge("tenant_api_db_pool_connections", "The API role's connection pool, per state.", ["state"],
                multiprocess_mode="livesum")
USAGE_WRITTEN = Counter("tenant_api_usage_records_written_total", "Usage records written to token_usage.")
USAGE_DROPPED = Counter("tenant_api_usage_records_dropped_total",
                        "Usage records given up (backlog over its bound, or refused by the database).")
SCHEDULER_FIRES = Counter("tenant_api_scheduler_fires_total", "Jobs created by the scheduler from schedules.")
SCHEDULER_LATENESS = Histogram("tenant_api_scheduler_lateness_seconds",
                               "How long after its due time a schedule fired.",
                               buckets=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0))
SCHEDULER_ERRORS = Counter("tenant_api_scheduler_errors_total", "Scheduler ticks or fires that failed.")
MAILS = Counter("tenant_api_mails_total", "Invite mails by outcome (sent, retry, failed).", ["outcome"])
SSE_STREAMS = Gauge("tenant_api_sse_streams_open", "Server-Sent Event streams open.", multiprocess_mode="livesum")
ROBOT_SOCKETS = Gauge("tenant_api_robot_sockets_open", "Robot WebSockets open.", multiprocess_mode="livesum")
RUNNER_CLAIMS_WAITING = Gauge("tenant_api_runner_claims_waiting", "Runners' claims waiting for work (long polls).",
                              multiprocess_mode="livesum")
RATE_LIMITED = Counter("tenant_api_rate_limited_total", "Requests refused with 429, by quota.", ["quota"])
RATE_LIMIT_STORE_ERRORS = Counter("tenant_api_rate_limit_store_errors_total",
                                  "Rate-limit counts that failed (the request was let through).")
PASSWORD_WORK_REFUSED = Counter("tenant_api_password_work_refused_total",
                                "Logins and signups answered 503: password work was saturated.", ["why"])
RETENTION_PURGED = Counter("tenant_api_retention_purged_total", "Rows removed by retention, by kind.", ["kind"])
WEBHOOK_DELIVERIES = Counter("tenant_api_webhook_deliveries_total",
                             "Webhook delivery attempts settled, by outcome (delivered, retry, failed, skipped,"
                             " paused).", ["outcome"])
WEBHOOK_DELIVERY_DURATION = Histogram("tenant_api_webhook_delivery_duration_seconds",
                                      "One webhook POST, connection to the last byte read.",
                                      buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


def pool_gauges(engine: Any) -> None:
    """Read the pool's state into DB_POOL (after each request, and before each scrape)."""
    pool = engine.pool
    try:
        DB_POOL.labels("in_use").set(pool.checkedout())
        DB_POOL.labels("idle").set(pool.checkedin())
        # Requests waiting for a connection: the asyncio queue's waiting getters
        # (SQLAlchemy exposes no public count).
        queue = getattr(getattr(pool, "_pool", None), "_queue", None)
        DB_POOL.labels("waiting").set(len(getattr(queue, "_getters", ()) or ()))
    except Exception:  # a pool without these (NullPool in a tool): no gauge
        return


def render() -> tuple[bytes, str]:
    """The exposition of this process, or of every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


@get("/metrics", opt={"public": True, "rate_limit": False}, include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition; ``Authorization: Bearer <METRICS_TOKEN>``."""
    token: str = request.app.state.settings.observability.metrics_token
    if not token:
        raise ProblemError(404, "metrics are not served here (set METRICS_TOKEN, or scrape METRICS_PORT)")
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise ProblemError(401, "metrics need Authorization: Bearer <METRICS_TOKEN>",
                           headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    engine = request.app.state.get("engine")
    if engine is not None:
        pool_gauges(engine)
    body, content_type = render()
    return Response(body, media_type=content_type)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def credential_label(scope: Scope) -> str | None:
    """What a log line may say about the credential: the token's display prefix (as
    stored, never the secret) or "session"; a refused one's prefix when it had one."""
    state = scope.get("state") or {}
    for key in ("principal", "refused"):
        principal = state.get(key)
        if principal is not None and getattr(principal, "prefix", None):
            return str(principal.prefix)
    credential = state.get("credential")
    if credential is not None and getattr(credential, "prefix", None):
        return str(credential.prefix)
    refused = state.get("credential_error")
    return str(refused) if refused else None


class ObservabilityMiddleware(ASGIMiddleware):
    """Outermost after the request id: counts and times every routed request and
    writes its access line. Open SSE streams and robot sockets are gauges."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(self, engine: Any, access: bool) -> None:
        self.engine = engine
        self.access = access

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope["type"] == "websocket":
            await self._socket(scope, receive, send, next_app)
            return
        started = time.perf_counter()
        status = 500
        streaming = False

        async def observe(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
                if content_type.startswith(b"text/event-stream"):
                    streaming = True
                    SSE_STREAMS.inc()
            await send(message)

        try:
            await next_app(scope, receive, observe)
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as exc:
            # Raised by a middleware inside (the credential check's 401, a 429): the
            # app's exception handler answers after we return.
            status = getattr(exc, "status_code", 500)
            raise
        finally:
            if streaming:
                SSE_STREAMS.dec()
            duration = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            method = str(scope.get("method", "GET"))
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(duration)
            pool_gauges(self.engine)
            if self.access:
                log_access(scope, method, route, status, duration)

    async def _socket(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        accepted = False

        async def observe(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                ROBOT_SOCKETS.inc()
            await send(message)

        started = time.perf_counter()
        try:
            await next_app(scope, receive, observe)
        finally:
            if accepted:
                ROBOT_SOCKETS.dec()
            if self.access:
                log_access(scope, "WEBSOCKET", scope.get("path_template") or "unmatched", 101 if accepted else 403,
                           time.perf_counter() - started)


def log_access(scope: Scope, method: str, route: str, status: int, duration: float | None) -> None:
    """One line per request: never the raw path or its query string (either may hold a
    secret or an id a log should not keep); the route template instead."""
    state = scope.get("state") or {}
    client = scope.get("client")
    fields: dict[str, Any] = {
        "request_id": state.get("request_id"),
        "method": method,
        "route": route,
        "status": status,
        "credential": credential_label(scope),
        "client": client[0] if client else None,
    }
    principal = state.get("principal")
    if principal is not None and getattr(principal, "organization_id", None) is not None:
        fields["organization_id"] = str(principal.organization_id)
    if duration is not None:
        fields["duration_ms"] = round(duration * 1000, 3)
    access_log.info("%s %s %s", method, route, status, extra={"fields": fields})


async def log_unrouted(message: Message, scope: Scope) -> None:
    """before_send hook: requests no route matched (404/405) pass no middleware; they
    get their access line and count here."""
    if message["type"] != "http.response.start" or scope.get("route_handler") is not None:
        return
    HTTP_REQUESTS.labels(scope.get("method", "GET"), "unmatched", str(message["status"])).inc()
    app = scope.get("app")
    settings = getattr(getattr(app, "state", None), "settings", None)
    if settings is None or settings.observability.access_log:
        log_access(scope, str(scope.get("method", "GET")), "unmatched", message["status"], None)


ROUTES = Routes(handlers=[metrics_endpoint])
