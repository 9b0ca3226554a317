"""Usage records: every authenticated request leaves one, without touching its hot path.

The edge middleware (ops/edge.py, around the credential check) sees each request's final
status and duration, and who it ran as (``scope["state"]``: the principal that
``open_request_session`` stored, a refused one, or a malformed credential). It hands a
small struct (``UsageRecord``) to the ``UsageRecorder`` (a deque append: no I/O, no await).

The recorder writes in a thread of its own, with its own event loop and one connection
as the API role: every ``flush_seconds`` or as soon as ``batch_size`` records wait, one
statement (``select app.record_usage($1::json)``) inserts the whole batch. So a request
never waits for its usage record, never shares a transaction with it, and a failed or
rolled-back request is still recorded. Being a thread, it does not depend on which event
loop serves requests or runs the lifespan hooks (the test client uses two).

What can be lost: the records still waiting in memory when the process dies without a
graceful shutdown (at most ``flush_seconds`` of traffic, at most ``max_pending``
records). A graceful shutdown (SIGTERM to uvicorn: in-flight requests finish, then the
lifespan shutdown) flushes everything first. If the database is unreachable records
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


class UsageRecorder:
    def __init__(self, database: DatabaseSettings, *, flush_seconds: float = 1.0, batch_size: int = 500,
                 max_pending: int = 50_000) -> None:
        self._dsn = database.url.replace("postgresql+asyncpg://", "postgresql://")
        self._pgbouncer = database.pgbouncer
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._pending: collections.deque[UsageRecord] = collections.deque()
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
        if len(self._pending) >= self.max_pending:
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
            return not self._pending
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
        if self._pending:
            log.error("usage recorder stopped with %d records unwritten", len(self._pending))

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

    async def _write_pending(self, final: bool) -> None:
        failures = 0
        while self._pending:
            n = min(len(self._pending), self.batch_size)
            batch = [self._pending.popleft() for _ in range(n)]
            started = time.perf_counter()
            try:
                await self._insert(batch)
            except Exception as exc:
                failures += 1
                log_failure(log, "writing %d usage records failed", exc, n)
                await self._disconnect()
                if failures >= 3 and not database_unavailable(exc):  # a batch the database keeps refusing
                    self.dropped += n
                    USAGE_DROPPED.inc(n)
                    self._settle(n)
                    failures = 0
                    continue
                self._pending.extendleft(reversed(batch))
                if not final:
                    return  # retry at the next tick
                await asyncio.sleep(0.2)
                continue
            self.flushes += 1
            self.written += n
            USAGE_WRITTEN.inc(n)
            self.flush_seconds_total += time.perf_counter() - started
            self._settle(n)

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
        prefix, reason = state["credential_error"], "malformed"
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
