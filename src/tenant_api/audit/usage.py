"""Usage records: every authenticated request leaves one, without touching its hot path.

The edge middleware (edge.py, around the credential check) sees each request's final
status and duration, and who it ran as (``scope["state"]``: the principal that
``open_request_session`` stored, a refused one, or a malformed credential). It hands a
small struct (``UsageRecord``) to the ``UsageRecorder`` (a deque append: no I/O, no await).

The recorder writes in a thread of its own, with its own event loop and one connection
as the API role: every ``flush_seconds`` or as soon as ``batch_size`` records wait, one
statement (``select app.record_usage($1::json)``) inserts the whole batch. So a request
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
from uuid import UUID

import asyncpg
import msgspec
from litestar.types import Scope

from tenant_api.ops.metrics import USAGE_DROPPED, USAGE_WRITTEN
from tenant_api.errors import database_unavailable, log_failure
from tenant_api.settings import DatabaseSettings

log = logging.getLogger("tenant_api.usage")

_MAX_UA = 256
_REFUSED_KNOWN = {"expired", "revoked", "not_member"}

_BucketKey = tuple[Any, ...]


def _bucket_key(row: UsageRecord) -> _BucketKey | None:
    """The aggregation key of a security event (a refused credential), None for a request."""
    reason = row.reason
    if reason is None:
        return None
    minute = int(row.occurred_at // 60)
    if row.organization_id is None:
        return ("unattributed", minute, row.client_ip, reason, row.prefix)
    return ("attributed", minute, row.organization_id, row.token_id, reason)


class UsageRecorder:
    def __init__(self, database: DatabaseSettings, *, flush_seconds: float = 1.0, batch_size: int = 500,
                 max_pending: int = 50_000) -> None:
        self._dsn = database.url.replace("postgresql+asyncpg://", "postgresql://")
        self._pgbouncer = database.pgbouncer
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._pending: collections.deque[UsageRecord] = collections.deque()
        # security events being aggregated (the request side adds, the writer takes ripe ones)
        self._buckets: dict[_BucketKey, UsageRecord] = {}
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

    def record(self, row: UsageRecord) -> None:
        if self._thread is None and not self._stopping:
            self.start()
        key = _bucket_key(row)
        if key is not None:
            with self._buckets_lock:
                bucket = self._buckets.get(key)
                if bucket is not None:
                    bucket.request_count += 1
                    bucket.last_occurred_at = row.occurred_at
                    self._accepted += 1
                    return
                if len(self._pending) + len(self._buckets) < self.max_pending:
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
            requests = sum(row.request_count for row in batch)
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

    async def _insert(self, batch: list[UsageRecord]) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn,
                statement_cache_size=0 if self._pgbouncer else 100,
                server_settings={"application_name": "tenant-api-usage", "statement_timeout": "30000"},
            )
        await self._conn.execute("select app.record_usage($1::json)", msgspec.json.encode(batch).decode())

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()


_ADDRESSES: dict[str, str | None] = {}  # peer address as the server gives it -> as stored (a few per process)


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    if not client:
        return None
    address = _ADDRESSES.get(client[0], "")
    if address == "":
        try:
            address = str(ipaddress.ip_address(client[0]))
        except ValueError:  # e.g. the test client's "testclient"
            address = None
        if len(_ADDRESSES) > 10_000:
            _ADDRESSES.clear()
        _ADDRESSES[client[0]] = address
    return address


def _user_agent(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers") or ():
        if name == b"user-agent":
            return value
    return None


UNREAD: Any = object()  # usage_row's user_agent when the caller has not read the headers


class UsageRecord(msgspec.Struct, gc=False):
    """One request's usage record, as app.record_usage reads it (field = JSON key).

    A struct the garbage collector does not track (``gc=False``: every field is an atomic
    value, so no record can be part of a cycle): up to a second of records waits for the
    writer, and as tracked dicts they were promoted through the collector's generations
    and made its full collections longer and more frequent (bench/RESULTS.md)."""

    occurred_at: float
    method: str
    route: str
    status: int
    duration_ms: float
    client_ip: str | None
    user_agent: str | None
    request_id: str | None
    organization_id: UUID | None = None
    token_id: UUID | None = None
    user_id: UUID | None = None
    prefix: str | None = None
    reason: str | None = None
    # a security event's aggregate (audit/usage.py: one record per minute and key)
    request_count: int = 1
    last_occurred_at: float | None = None


def usage_row(scope: Scope, status: int, started: float, duration: float,
              user_agent: bytes | None = UNREAD) -> UsageRecord | None:
    """The record for a finished request, or None when there is nothing to attribute
    (no credential sent, or the database failed before the credential was checked).
    ``user_agent``: the header (None: absent), when the caller has already read it."""
    state = scope.get("state") or {}
    principal = state.get("principal") or state.get("refused")
    if principal is not None and (principal.ok or principal.status in _REFUSED_KNOWN):
        # UUIDs as they are: the writer's JSON encoder writes their text.
        organization_id, token_id, user_id = principal.organization_id, principal.token_id, principal.user_id
        prefix, reason = principal.prefix or "", None if principal.ok else principal.status
    elif principal is not None and (credential := state.get("credential")) is not None:
        # an unknown token: no organization to own it
        organization_id = token_id = user_id = None
        prefix, reason = credential.prefix, "unknown"
    elif "credential_error" in state:
        organization_id = token_id = user_id = None
        # malformed, or refused unseen because the address refused too many (ops.ratelimit)
        prefix, reason = state["credential_error"], state.get("refusal_reason", "malformed")
    else:
        return None
    if user_agent is UNREAD:
        user_agent = _user_agent(scope)
    return UsageRecord(
        occurred_at=started,
        method=str(scope.get("method", "GET"))[:16],
        # the route template (/v1/agents/{item_id}), never the raw path with its ids
        route=(scope.get("path_template") or "?")[:512],
        status=status,
        duration_ms=round(duration * 1000, 3),
        client_ip=_client_ip(scope),
        user_agent=user_agent[:_MAX_UA].decode("latin-1") if user_agent is not None else None,
        request_id=state.get("request_id"),
        organization_id=organization_id, token_id=token_id, user_id=user_id, prefix=prefix, reason=reason,
    )
