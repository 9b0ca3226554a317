"""One LISTEN connection per process, fanned out in memory to the live streams.

PostgreSQL delivers a NOTIFY to every session LISTENing on the channel, whatever its role
and whatever RLS would let it read. So a notification is treated as a hint and nothing
more: its payload holds ids only (organization, conversation, message, seq; see
policies/conversation_message.sql), the hub only uses it to decide WHICH local
subscribers to wake, and a woken subscriber reads the messages itself, in its own
transaction, as its own credential, under RLS (resources/conversations.py). Anyone able
to connect may also NOTIFY this channel with any payload: the worst a forged one can do
is make a subscriber run a query that returns what it was allowed to read anyway.

The connection is opened lazily by the first stream, re-opened by the next stream
iteration after a loss (subscribers are woken then, to catch up on what was missed), and
closed on application shutdown. Streams also poll at every heartbeat, so a missed
notification delays a message by at most one heartbeat, it never loses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

log = logging.getLogger("tenant_api.stream")

CHANNEL = "conversation_message"
Key = tuple[UUID, UUID]  # (organization_id, conversation_id)


@dataclass(eq=False)
class Subscription:
    key: Key
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ConversationHub:
    def __init__(self, dsn: str, fetch_concurrency: int) -> None:
        self.dsn = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.heartbeat = 15.0  # seconds between keep-alive comments (and catch-up polls)
        self.max_stream_seconds = 600.0  # then the stream ends; EventSource resumes with Last-Event-ID
        # Stream fetches share the request pool: never let a burst of them take all of it.
        self.fetch_slots = asyncio.Semaphore(max(1, fetch_concurrency))
        self.notifications = 0  # received on the LISTEN connection (all organizations)
        self.closed = False
        self.draining = False  # the process is stopping: streams send their final event and end
        self._subscribers: dict[Key, set[Subscription]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0  # after a failed connect, wait before the next attempt

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def subscribe(self, organization_id: UUID, conversation_id: UUID) -> Subscription:
        sub = Subscription((organization_id, conversation_id))
        self._subscribers.setdefault(sub.key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.key]

    async def listen(self) -> None:
        """Open the LISTEN connection unless it is open (first stream, or after a loss)."""
        loop = asyncio.get_running_loop()
        if self.closed or self.listening or loop.time() < self._retry_at:
            return
        async with self._lock:
            if self.closed or self.listening or loop.time() < self._retry_at:
                return
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10,
                                             server_settings={"application_name": "tenant-api-listen"})
                try:
                    await conn.add_listener(CHANNEL, self._notified)
                except BaseException:
                    await conn.close()
                    raise
            except Exception:
                self._retry_at = loop.time() + 5  # not one attempt per stream iteration
                raise
            conn.add_termination_listener(self._lost)
            self._conn = conn
        # Whatever was committed while nobody listened: let every subscriber look.
        self._wake_all()

    @property
    def open_streams(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def drain(self) -> None:
        """Graceful shutdown (tenant_api.ops.shutdown): every stream ends now, with a
        final event telling its client to reconnect."""
        self.draining = True
        self._wake_all()

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
            key = (UUID(data["organization_id"]), UUID(data["conversation_id"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # not one of ours: anyone may NOTIFY this channel
        for sub in self._subscribers.get(key, ()):
            sub.wake.set()

    def _lost(self, conn: object) -> None:
        if conn is self._conn:
            self._conn = None
            if not self.closed:
                log.warning("LISTEN connection lost; the next stream iteration reconnects")
            self._wake_all()

    def _wake_all(self) -> None:
        for subs in self._subscribers.values():
            for sub in subs:
                sub.wake.set()
