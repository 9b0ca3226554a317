"""Usage records: every authenticated request leaves one, without touching its hot path.

``UsageMiddleware`` (ASGI, around the credential check) sees each request's final status
and duration, and who it ran as (``scope["state"]``: the principal that
``open_request_session`` stored, a refused one, or a malformed credential). It hands a
small dict to the ``UsageRecorder`` (a deque append: no I/O, no await).

The recorder writes in a thread of its own, with its own event loop and one connection
as the API role: every ``flush_seconds`` or as soon as ``batch_size`` records wait, one
statement (``select app.record_usage($1::jsonb)``) inserts the whole batch. So a request
never waits for its usage record, never shares a transaction with it, and a failed or
rolled-back request is still recorded. Being a thread, it does not depend on which event
loop serves requests or runs the lifespan hooks (the test client uses two).

Refused credentials are security events, and a flood of them must not cost a row each:
the recorder aggregates them as they arrive. Unattributed ones (unknown, malformed or
rate-limited credentials) by minute, client address, reason and prefix: the batch carries
one record per key with ``request_count``, and ``app.record_usage`` adds it to the
minute's row (an upsert, shared by every worker). Attributed ones (a known token refused
as expired, revoked or no longer a member's) by minute, token and reason: the one record
is held here until its minute ends (sealed rows are never updated), then written with its
``request_count``.

What can be lost: the records still waiting in memory when the process dies without a
graceful shutdown (at most ``flush_seconds`` of traffic, at most ``max_pending``
records), and a refused token's aggregated security events of the current minute. A
graceful shutdown (SIGTERM to uvicorn: in-flight requests finish, then the lifespan
shutdown) flushes everything first. If the database is unreachable records
wait (bounded by ``max_pending``; beyond it they are dropped and counted in ``dropped``).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import threading
import time
from typing import Any

import asyncpg
import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from tenant_api.auth.request import is_public
from tenant_api.ops.metrics import USAGE_DROPPED, USAGE_WRITTEN
from tenant_api.errors import database_unavailable, log_failure
from tenant_api.settings import DatabaseSettings

log = logging.getLogger("tenant_api.usage")

_MAX_UA = 256
_REFUSED_KNOWN = {"expired", "revoked", "not_member"}

_BucketKey = tuple[Any, ...]


def _bucket_key(row: dict[str, Any]) -> _BucketKey | None:
    """The aggregation key of a security event (a refused credential), None for a request."""
    reason = row.get("reason")
    if reason is None:
        return None
    minute = int(row["occurred_at"] // 60)
    if row.get("organization_id") is None:
        return ("unattributed", minute, row.get("client_ip"), reason, row.get("prefix"))
    return ("attributed", minute, row["organization_id"], row.get("token_id"), reason)


class UsageRecorder:
    def __init__(self, database: DatabaseSettings, *, flush_seconds: float = 1.0, batch_size: int = 500,
                 max_pending: int = 50_000) -> None:
        self._dsn = database.url.replace("postgresql+asyncpg://", "postgresql://")
        self._pgbouncer = database.pgbouncer
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        # security events being aggregated (the request side adds, the writer takes ripe ones)
        self._buckets: dict[_BucketKey, dict[str, Any]] = {}
        self._buckets_lock = threading.Lock()
        self._force = False  # flush(): write the held buckets now
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._accepted = 0  # records accepted so far (record() is called from one loop's thread)
        self._settled = 0  # records written or given up on
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._conn: asyncpg.Connection | None = None
        self.written = 0
        self.dropped = 0
        self.flushes = 0
        self.flush_seconds_total = 0.0

    # -- the request side: no I/O ------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        if self._thread is None and not self._stopping:
            self.start()
        key = _bucket_key(row)
        if key is not None:
            with self._buckets_lock:
                bucket = self._buckets.get(key)
                if bucket is not None:
                    bucket["request_count"] += 1
                    bucket["last_occurred_at"] = row["occurred_at"]
                    self._accepted += 1
                    return
                if len(self._pending) + len(self._buckets) < self.max_pending:
                    row["request_count"] = 1
                    self._buckets[key] = row
                    self._accepted += 1
                    return
        if len(self._pending) + len(self._buckets) >= self.max_pending:
            self.dropped += 1
            USAGE_DROPPED.inc()
            return
        self._pending.append(row)
        self._accepted += 1
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="usage-recorder", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every record accepted so far is written (tests, benchmarks)."""
        target = self._accepted
        if self._thread is None:
            return not self._pending and not self._buckets
        self._force = True
        self._wake.set()
        with self._progress:
            return self._progress.wait_for(lambda: self._settled >= target, timeout)

    def close(self, timeout: float = 15.0) -> None:
        """Graceful shutdown: write what is pending, then stop the thread."""
        self._stopping = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._wake.set()
            thread.join(timeout)
        if self._pending or self._buckets:
            log.error("usage recorder stopped with %d records unwritten", len(self._pending) + len(self._buckets))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                self._wake.wait(self.flush_seconds)
                self._wake.clear()
                stopping = self._stopping
                loop.run_until_complete(self._write_pending(final=stopping))
                if stopping:
                    break
        finally:
            if self._conn is not None:
                loop.run_until_complete(self._disconnect())
            loop.close()

    def _take_ripe_buckets(self, everything: bool) -> None:
        """Move aggregated security events to the queue: unattributed ones at every tick
        (the database adds them up), attributed ones once their minute has ended."""
        current_minute = int(time.time() // 60)
        with self._buckets_lock:
            ripe = [key for key in self._buckets
                    if everything or key[0] == "unattributed" or key[1] < current_minute]
            for key in ripe:
                self._pending.append(self._buckets.pop(key))

    async def _write_pending(self, final: bool) -> None:
        force, self._force = self._force, False
        self._take_ripe_buckets(everything=final or force)
        failures = 0
        while self._pending:
            n = min(len(self._pending), self.batch_size)
            batch = [self._pending.popleft() for _ in range(n)]
            requests = sum(row.get("request_count", 1) for row in batch)
            started = time.perf_counter()
            try:
                await self._insert(batch)
            except Exception as exc:
                failures += 1
                log_failure(log, "writing %d usage records failed", exc, n)
                await self._disconnect()
                if failures >= 3 and not database_unavailable(exc):  # a batch the database keeps refusing
                    self.dropped += requests
                    USAGE_DROPPED.inc(requests)
                    self._settle(requests)
                    failures = 0
                    continue
                self._pending.extendleft(reversed(batch))
                if not final:
                    return  # retry at the next tick
                await asyncio.sleep(0.2)
                continue
            self.flushes += 1
            self.written += requests
            USAGE_WRITTEN.inc(requests)
            self.flush_seconds_total += time.perf_counter() - started
            self._settle(requests)

    def _settle(self, n: int) -> None:
        with self._progress:
            self._settled += n
            self._progress.notify_all()

    async def _insert(self, batch: list[dict[str, Any]]) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn,
                statement_cache_size=0 if self._pgbouncer else 100,
                server_settings={"application_name": "tenant-api-usage", "statement_timeout": "30000"},
            )
        await self._conn.execute("select app.record_usage($1::jsonb)", msgspec.json.encode(batch).decode())

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    if not client:
        return None
    try:
        return str(ipaddress.ip_address(client[0]))
    except ValueError:  # e.g. the test client's "testclient"
        return None


def _user_agent(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"user-agent":
            return value.decode("latin-1")[:_MAX_UA]
    return None


def usage_row(scope: Scope, status: int, started: float, duration: float) -> dict[str, Any] | None:
    """The record for a finished request, or None when there is nothing to attribute
    (no credential sent, or the database failed before the credential was checked)."""
    state = scope.get("state") or {}
    row: dict[str, Any] = {
        "occurred_at": started,
        "method": str(scope.get("method", "GET"))[:16],
        # the route template (/v1/agents/{item_id}), never the raw path with its ids
        "route": (scope.get("path_template") or "?")[:512],
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "client_ip": _client_ip(scope),
        "user_agent": _user_agent(scope),
        "request_id": state.get("request_id"),
    }
    principal = state.get("principal") or state.get("refused")
    if principal is not None and (principal.ok or principal.status in _REFUSED_KNOWN):
        row.update(organization_id=str(principal.organization_id), token_id=str(principal.token_id),
                   user_id=str(principal.user_id) if principal.user_id else None,
                   prefix=principal.prefix or "", reason=None if principal.ok else principal.status)
        return row
    credential = state.get("credential")
    if principal is not None and credential is not None:  # unknown token: no organization to own it
        row.update(organization_id=None, prefix=credential.prefix, reason="unknown")
        return row
    if "credential_error" in state:
        # malformed, or refused unseen because the address refused too many (ops.ratelimit)
        row.update(organization_id=None, prefix=state["credential_error"],
                   reason=state.get("refusal_reason", "malformed"))
        return row
    return None


class UsageMiddleware(ASGIMiddleware):
    """Outside the credential check, inside the request id: sees every final status."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, recorder: UsageRecorder) -> None:
        self.recorder = recorder

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if is_public(scope.get("route_handler")):
            await next_app(scope, receive, send)
            return
        started, t0 = time.time(), time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, send_status)
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as exc:
            # Raised outside the route's own exception handler (the credential middleware's
            # 401): the app-level handler turns it into the response after we return.
            status = getattr(exc, "status_code", 500)
            raise
        finally:
            row = usage_row(scope, status, started, time.perf_counter() - t0)
            if row is not None:
                self.recorder.record(row)
