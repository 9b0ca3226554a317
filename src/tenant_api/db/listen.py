"""One LISTEN connection per process, fanned out in memory to local subscribers.

PostgreSQL delivers a NOTIFY to every session LISTENing on the channel, whatever its role
and whatever RLS would let it read, and anyone able to connect may NOTIFY any payload. So
a notification is a wake-up hint and nothing more: its payload holds ids only, the hub
uses them to decide WHICH local subscribers to wake, and a woken subscriber reads (or
claims) for itself, in its own transaction, as its own credential, under RLS. The worst a
forged notification can do is make a subscriber run a query that returns what it was
allowed to read anyway.

The connection is opened lazily by the first subscriber that waits, re-opened by the next
one after a loss (every subscriber is woken then, to catch up on what was missed), and
closed on application shutdown. Subscribers also poll on their own, so a missed
notification delays them a little, never loses anything. Behind PgBouncer in transaction
mode LISTEN does not work: LISTEN_DATABASE_URL points this connection at PostgreSQL.

Two hubs use it: the live conversation streams (resources/conversation_hub.py) and the
runners' long-polling claims (runs/queue.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import asyncpg

K = TypeVar("K", bound=Hashable)


@dataclass(eq=False)
class Subscriber(Generic[K]):
    key: K
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ListenHub(Generic[K]):
    """Subclasses name their channel and turn a payload into the key it wakes."""

    channel: ClassVar[str]
    application_name: ClassVar[str]
    log: ClassVar[logging.Logger]

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.notifications = 0  # received on the LISTEN connection (all organizations)
        self.closed = False
        self.draining = False  # shutting down: subscribers end (their own way) and none starts waiting
        self._subscribers: dict[K, set[Subscriber[K]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0  # after a failed connect, wait before the next attempt

    def key_of(self, payload: dict[str, Any]) -> K:
        """The subscribers' key a notification names; raises on a payload not of ours."""
        raise NotImplementedError

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def subscribed(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def has_subscribers(self, key: K) -> bool:
        return key in self._subscribers

    def subscribe(self, key: K) -> Subscriber[K]:
        sub = Subscriber(key)
        self._subscribers.setdefault(key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber[K]) -> None:
        subs = self._subscribers.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.key]

    def drain(self) -> None:
        """Graceful shutdown (ops/shutdown.py): every subscriber is woken and ends."""
        self.draining = True
        self._wake_all()

    async def listen(self) -> None:
        """Open the LISTEN connection unless it is open (first subscriber, or after a loss)."""
        loop = asyncio.get_running_loop()
        if self.closed or self.listening or loop.time() < self._retry_at:
            return
        async with self._lock:
            if self.closed or self.listening or loop.time() < self._retry_at:
                return
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10,
                                             server_settings={"application_name": self.application_name})
                try:
                    await conn.add_listener(self.channel, self._notified)
                except BaseException:
                    await conn.close()
                    raise
            except Exception:
                self._retry_at = loop.time() + 5  # not one attempt per waiting subscriber
                raise
            conn.add_termination_listener(self._lost)
            self._conn = conn
        # Whatever was committed while nobody listened: let every subscriber look.
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
            key = self.key_of(json.loads(payload))
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # not one of ours: anyone may NOTIFY this channel
        for sub in self._subscribers.get(key, ()):
            sub.wake.set()

    def _lost(self, conn: object) -> None:
        if conn is self._conn:
            self._conn = None
            if not self.closed:
                self.log.warning("%s LISTEN connection lost; the next subscriber reconnects", self.channel)
            self._wake_all()

    def _wake_all(self) -> None:
        for subs in self._subscribers.values():
            for sub in subs:
                sub.wake.set()
