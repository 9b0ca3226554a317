"""The live conversation streams' LISTEN hub (db/listen.py: one connection per process,
a notification only a hint). The payload of a ``conversation_message`` notification holds
ids only (organization, conversation, message, seq; policies/conversation_message.sql); a
woken stream reads the messages itself, as its own credential, under RLS
(resources/conversations.py), and also polls at every heartbeat, so a missed notification
delays a message by at most one heartbeat, it never loses it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar
from uuid import UUID

from tenant_api.db.listen import ListenHub, Subscriber

CHANNEL = "conversation_message"
Key = tuple[UUID, UUID]  # (organization_id, conversation_id)
Subscription = Subscriber[Key]


class ConversationHub(ListenHub[Key]):
    channel: ClassVar[str] = CHANNEL
    application_name: ClassVar[str] = "tenant-api-listen"
    log: ClassVar[logging.Logger] = logging.getLogger("tenant_api.stream")

    def __init__(self, dsn: str, fetch_concurrency: int) -> None:
        super().__init__(dsn)
        self.heartbeat = 15.0  # seconds between keep-alive comments (and catch-up polls)
        self.max_stream_seconds = 600.0  # then the stream ends; EventSource resumes with Last-Event-ID
        # Stream fetches share the request pool: never let a burst of them take all of it.
        self.fetch_slots = asyncio.Semaphore(max(1, fetch_concurrency))

    def key_of(self, payload: dict[str, Any]) -> Key:
        return UUID(payload["organization_id"]), UUID(payload["conversation_id"])

    @property
    def open_streams(self) -> int:
        return self.subscribed

    def subscribe_stream(self, organization_id: UUID, conversation_id: UUID) -> Subscription:
        return self.subscribe((organization_id, conversation_id))
