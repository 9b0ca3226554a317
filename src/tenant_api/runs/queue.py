"""Long-polling claims: one LISTEN connection per process, fanned out in memory.

Like the conversation hub (resources/conversation_hub.py), and for the same reasons: a
NOTIFY reaches every listening session whatever its role and RLS, so its payload holds
ids only (organization and kind, app.notify_run_queued), and it is a wake-up hint, never
data. A woken claim claims in a transaction of its own, as its own credential, under RLS;
a forged notification (anyone connected may NOTIFY) only causes a claim that finds what
it was allowed to find anyway. A waiting claim also retries every few seconds, so a
missed notification (the connection being re-opened) delays it a little, never loses work.

Behind PgBouncer in transaction mode LISTEN does not work: LISTEN_DATABASE_URL points
this connection at PostgreSQL directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

log = logging.getLogger("tenant_api.runs")

CHANNEL = "run_queued"
Key = tuple[UUID, str]  # (organization_id, kind)


@dataclass(eq=False)
class Waiter:
    key: Key
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class RunQueueHub:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.notifications = 0
        self.closed = False
        self.draining = False  # shutting down: waiting claims end (503) and none starts waiting
        self._waiters: dict[Key, set[Waiter]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def waiting(self) -> int:
        """Claims waiting for work in this process."""
        return sum(len(waiters) for waiters in self._waiters.values())

    def drain(self) -> None:
        """Graceful shutdown (ops/shutdown.py): wake every waiting claim so that it ends
        with a 503 its runner retries (elsewhere), instead of being cancelled mid-wait."""
        self.draining = True
        self._wake_all()

    def subscribe(self, organization_id: UUID, kind: str) -> Waiter:
        waiter = Waiter((organization_id, kind))
        self._waiters.setdefault(waiter.key, set()).add(waiter)
        return waiter

    def unsubscribe(self, waiter: Waiter) -> None:
        waiters = self._waiters.get(waiter.key)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[waiter.key]

    async def listen(self) -> None:
        """Open the LISTEN connection unless it is open (first waiting claim, or after a loss)."""
        loop = asyncio.get_running_loop()
        if self.closed or self.listening or loop.time() < self._retry_at:
            return
        async with self._lock:
            if self.closed or self.listening or loop.time() < self._retry_at:
                return
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10,
                                             server_settings={"application_name": "tenant-api-listen-runs"})
                try:
                    await conn.add_listener(CHANNEL, self._notified)
                except BaseException:
                    await conn.close()
                    raise
            except Exception:
                self._retry_at = loop.time() + 5
                raise
            conn.add_termination_listener(self._lost)
            self._conn = conn
        self._wake_all()  # whatever was queued while nobody listened

    async def close(self) -> None:
        self.closed = True
        self._wake_all()
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                await conn.close()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            data = json.loads(payload)
            key = (UUID(data["organization_id"]), str(data["kind"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # not one of ours
        for waiter in self._waiters.get(key, ()):
            waiter.wake.set()

    def _lost(self, conn: object) -> None:
        if conn is self._conn:
            self._conn = None
            if not self.closed:
                log.warning("run queue LISTEN connection lost; the next waiting claim reconnects")
            self._wake_all()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.wake.set()
