"""Retention: finished things are purged after a while, by the scheduler process.

Each kind has a setting (RETENTION_<KIND>_DAYS; 0 keeps forever) and one narrow
definer function (policies/retention.sql) that deletes at most a batch of that kind's
finished rows older than a cutoff (never younger than a day).
A round calls each function in short transactions until a batch comes back short, at
most ``MAX_BATCHES`` per kind, so one round is bounded however far behind it is; the
next round goes on. The scheduler runs a round every RETENTION_INTERVAL_SECONDS.

Deletions of tenant rows are audited in their organization with request id
``retention`` (policies/retention.sql). The audit trail's own retention is
``tenant-api audit purge`` (sealed blocks, docs/audit.md).

Webhook deliveries are not audited (the delivery worker's bookkeeping); their attempts
go with them, and events with no delivery left go too.

To add a kind: a setting in RetentionSettings, a function in policies/retention.sql
(its delete policies in the table's own file), and a ``Purge`` in ``PURGES``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api.ops.metrics import RETENTION_PURGED
from tenant_api.settings import RetentionSettings

log = logging.getLogger("tenant_api.retention")

MAX_BATCHES = 20


@dataclass(frozen=True)
class Purge:
    kind: str
    days: Callable[[RetentionSettings], int]
    function: str  # "<schema>.<name>", called with (cutoff timestamptz, limit integer)


PURGES: tuple[Purge, ...] = (
    Purge("jobs", lambda r: r.jobs_days, "auth.purge_finished_jobs"),
    Purge("desktop_connections", lambda r: r.desktop_connections_days, "auth.purge_closed_desktop_connections"),
    Purge("invite_mails", lambda r: r.invite_mails_days, "auth.purge_sent_invite_mails"),
    Purge("security_events", lambda r: r.security_events_days, "app.purge_security_events"),
    Purge("webhook_deliveries", lambda r: r.webhook_deliveries_days, "auth.purge_webhook_deliveries"),
)


async def purge_round(engine: AsyncEngine, settings: RetentionSettings,
                      now: dt.datetime | None = None) -> dict[str, int]:
    """One round over every kind; returns rows removed per kind."""
    now = now or dt.datetime.now(dt.UTC)
    removed: dict[str, int] = {}
    for purge in PURGES:
        days = purge.days(settings)
        if days <= 0:
            continue
        cutoff = now - dt.timedelta(days=days)
        statement = text(f"select {purge.function}(:cutoff, :limit)")
        total = 0
        for _ in range(MAX_BATCHES):
            async with engine.begin() as conn:
                n = int((await conn.execute(statement, {"cutoff": cutoff, "limit": settings.batch_size})).scalar() or 0)
            total += n
            if n < settings.batch_size:
                break
        if total:
            RETENTION_PURGED.labels(purge.kind).inc(total)
            log.info("retention removed %d %s older than %d days", total, purge.kind, days)
        removed[purge.kind] = total
    return removed


async def purge_periodically(engine: AsyncEngine, settings: RetentionSettings, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await purge_round(engine, settings)
        except Exception:  # the database restarting: the next round goes on
            log.exception("retention round failed; retrying in %.0fs", settings.interval_seconds)
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.interval_seconds)
        except TimeoutError:
            pass
