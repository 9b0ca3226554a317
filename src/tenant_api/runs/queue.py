"""Long-polling claims: one LISTEN connection per process, fanned out in memory.

A LISTEN hub (db/listen.py), like the conversation streams', and for the same reasons: a
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

import logging
from typing import Any, ClassVar
from uuid import UUID

from tenant_api.db.listen import ListenHub, Subscriber

CHANNEL = "run_queued"
Key = tuple[UUID, str]  # (organization_id, kind)
Waiter = Subscriber[Key]


class RunQueueHub(ListenHub[Key]):
    channel: ClassVar[str] = CHANNEL
    application_name: ClassVar[str] = "tenant-api-listen-runs"
    log: ClassVar[logging.Logger] = logging.getLogger("tenant_api.runs")

    def key_of(self, payload: dict[str, Any]) -> Key:
        return UUID(payload["organization_id"]), str(payload["kind"])

    @property
    def waiting(self) -> int:
        """Claims waiting for work in this process."""
        return self.subscribed

    def subscribe_claim(self, organization_id: UUID, kind: str) -> Waiter:
        return self.subscribe((organization_id, kind))
