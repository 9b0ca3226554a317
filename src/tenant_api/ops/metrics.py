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
import bisect
import hmac
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Request, Response, get
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
from tenant_api.ops.logs import ACCESS_LOGGER
from tenant_api.routing import Routes
from tenant_api.tasks import task_during

access_log = logging.getLogger(ACCESS_LOGGER)

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
    observer = request.app.state.get("request_observer")
    if observer is not None:
        observer.flush()  # this process's counts up to now, the pool as it is
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


def is_event_stream(headers: Any) -> bool:
    for name, value in headers or ():
        if name == b"content-type":
            return bool(value.startswith(b"text/event-stream"))
    return False


class RequestObserver:
    """Counts and times every routed request and writes its access line (called by the
    edge middleware, edge.py, when the answer is final). Open SSE streams and robot
    sockets are gauges.

    The request counts, latencies and the pool's gauges are kept in this process and
    written into their series by ``flush()``: once a second (``running``, a lifespan
    task), before this process answers a scrape, and at shutdown. In prometheus-client's
    multiprocess mode (several workers) every series update is a locked write to a shared
    file: three per request plus the pool's three cost a read 14 µs of API CPU, against
    a dictionary's arithmetic now (bench/RESULTS.md). A scrape sees another worker's
    requests at most a second late; a worker killed outright loses its last second of
    counts (its requests' access lines and usage records are not affected)."""

    def __init__(self, engine: Any, access: bool, flush_seconds: float = 1.0) -> None:
        self.engine = engine
        self.access = access
        self.flush_seconds = flush_seconds
        self._counts: dict[tuple[str, str, int], int] = {}
        # (method, route) -> [sum of durations, count per bucket (HTTP_LATENCY's bounds, +Inf last)]
        self._latency: dict[tuple[str, str], list[Any]] = {}
        self._series: dict[Any, Any] = {}  # label values -> the series' child, looked up once
        self._pool = PoolGauges()

    def request(self, scope: Scope, status: int, duration: float) -> None:
        route = scope.get("path_template") or "unmatched"
        method: str = scope.get("method", "GET")  # type: ignore[assignment]
        key = (method, route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[(method, route)] = [0.0, [0] * (len(_LATENCY_BUCKETS) + 1)]
        latency[0] += duration
        latency[1][bisect.bisect_left(_LATENCY_BUCKETS, duration)] += 1  # as Histogram.observe picks it
        if self.access:
            log_access(scope, method, route, status, duration)

    def unrouted(self, scope: Scope, status: int) -> None:
        """A request no route matched (404/405): it passed no middleware, so it is counted
        and logged here (log_unrouted), untimed."""
        method = str(scope.get("method", "GET"))
        key = (method, "unmatched", status)
        self._counts[key] = self._counts.get(key, 0) + 1
        if self.access:
            log_access(scope, method, "unmatched", status, None)

    def flush(self) -> None:
        """Write what was counted since the last flush into the series (and read the pool)."""
        counts, self._counts = self._counts, {}
        latencies, self._latency = self._latency, {}
        for (method, route, status), n in counts.items():
            self._child(HTTP_REQUESTS, method, route, str(status)).inc(n)
        for (method, route), (total, buckets) in latencies.items():
            histogram = self._child(HTTP_LATENCY, method, route)
            # Histogram has no public bulk observe: its sum and per-bucket values are what
            # observe() increments (prometheus-client 0.26; tests/unit/test_metrics.py
            # compares the two ways).
            histogram._sum.inc(total)
            for value, n in zip(histogram._buckets, buckets, strict=True):
                if n:
                    value.inc(n)
        if self.engine is not None:
            self._pool.read(self.engine)

    def _child(self, series: Any, *labels: str) -> Any:
        child = self._series.get((series, labels))
        if child is None:
            child = self._series[(series, labels)] = series.labels(*labels)
        return child

    @asynccontextmanager
    async def running(self, app: Any) -> AsyncIterator[None]:
        """Lifespan: flush every ``flush_seconds`` while the app serves, and at the end."""

        async def flush_forever() -> None:
            while True:
                await asyncio.sleep(self.flush_seconds)
                self.flush()

        try:
            async with task_during(flush_forever()):
                yield
        finally:
            self.flush()

    async def socket(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False

        async def observe(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                ROBOT_SOCKETS.inc()
            await send(message)

        started = time.perf_counter()
        try:
            await app(scope, receive, observe)
        finally:
            if accepted:
                ROBOT_SOCKETS.dec()
            if self.access:
                log_access(scope, "WEBSOCKET", scope.get("path_template") or "unmatched", 101 if accepted else 403,
                           time.perf_counter() - started)


class PoolGauges:
    """DB_POOL read from the engine's pool, its three series looked up once."""

    def __init__(self) -> None:
        self.in_use, self.idle, self.waiting = (DB_POOL.labels(s) for s in ("in_use", "idle", "waiting"))

    def read(self, engine: Any) -> None:
        pool = engine.pool
        try:
            self.in_use.set(pool.checkedout())
            self.idle.set(pool.checkedin())
            # Requests waiting for a connection: the asyncio queue's waiting getters
            # (SQLAlchemy exposes no public count).
            queue = getattr(getattr(pool, "_pool", None), "_queue", None)
            self.waiting.set(len(getattr(queue, "_getters", ()) or ()))
        except Exception:  # a pool without these (NullPool in a tool): no gauge
            return


def log_access(scope: Scope, method: str, route: str, status: int, duration: float | None) -> None:
    """One line per request: never the raw path or its query string (either may hold a
    secret or an id a log should not keep); the route template instead."""
    if not access_log.isEnabledFor(logging.INFO):
        return
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
    access_log.handle(_access_record(method, route, status, fields))


_START = time.time()
_THREAD_NAMES: dict[int, str] = {}


def _access_record(method: str, route: str, status: int, fields: dict[str, Any]) -> logging.LogRecord:
    """The access line's LogRecord, made without Logger.info's caller lookup (a walk up
    the stack) and per-record process and thread inquiries: one is written per request.
    The record has every attribute a standard record has, so any handler or formatter
    of the process's logging configuration takes it as it would any other."""
    now = time.time()
    thread = threading.get_ident()
    name = _THREAD_NAMES.get(thread)
    if name is None:
        name = _THREAD_NAMES[thread] = threading.current_thread().name
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(
        name=ACCESS_LOGGER, msg="%s %s %s", args=(method, route, status), levelname="INFO",
        levelno=logging.INFO, pathname=__file__, filename="metrics.py", module="metrics", exc_info=None,
        exc_text=None, stack_info=None, lineno=0, funcName="log_access", created=now,
        msecs=int(now * 1000) % 1000 + 0.0, relativeCreated=(now - _START) * 1000, thread=thread, threadName=name,
        processName=_PROCESS_NAME, process=_PID, taskName=None, fields=fields,
    )
    return record


_PID = os.getpid()
_PROCESS_NAME = mp.current_process().name if (mp := sys.modules.get("multiprocessing")) else "MainProcess"


async def log_unrouted(message: Message, scope: Scope) -> None:
    """before_send hook: requests no route matched (404/405) pass no middleware; the
    app's RequestObserver counts and logs them from here."""
    if message["type"] != "http.response.start" or scope.get("route_handler") is not None:
        return
    scope["app"].state.request_observer.unrouted(scope, message["status"])


ROUTES = Routes(handlers=[metrics_endpoint])
