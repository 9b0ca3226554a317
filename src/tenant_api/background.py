"""Every background duty, and the only doors into the database each one uses.

The duties run as the API role with no request context (RLS shows them nothing), so each
works through a few narrow SECURITY DEFINER functions owned by tenant_auth. When the
duties get database roles of their own, this is the list to move: ``DUTIES`` names every
such function per duty (tests/security/test_catalog.py checks it against the catalog).

Where they run: the invite mailer and the desktop reaper in each API process
(create_app); everything else in the scheduler process (``tenant-api scheduler``, and a
thread of ``make run``): ``run`` below.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from sqlalchemy import text

from tenant_api.db.engine import create_api_engine
from tenant_api.ops.retention import PURGES
from tenant_api.settings import Settings

log = logging.getLogger("tenant_api.background")

DUTIES: dict[str, tuple[str, ...]] = {
    "job scheduler (scheduler.py)": ("claim_due_schedules", "fire_schedule"),
    "invite mailer (invites/mailer.py)": ("claim_invite_mail", "finish_invite_mail"),
    "desktop connection reaper (resources/desktop_connections.py)": ("reap_desktop_connections",),
    "run lease reaper (runs/reaper.py)": ("requeue_expired_runs",),
    "webhook delivery (webhooks/delivery.py)": ("claim_webhook_deliveries", "webhook_delivery_context",
                                                "finish_webhook_delivery"),
    "idempotency key purge (below)": ("purge_idempotency_keys",),
    # (and app.purge_security_events, owned by tenant_audit)
    "retention (ops/retention.py)": tuple(p.function.removeprefix("auth.") for p in PURGES
                                          if p.function.startswith("auth.")),
}

PURGE = text("select auth.purge_idempotency_keys(:limit)")


async def purge_idempotency_keys(settings: Settings, stop: asyncio.Event, every: float = 600.0) -> None:
    """Idempotency keys are kept 24 hours; then this deletes them (any organization's)."""
    engine = create_api_engine(replace(settings.database, pool_size=1, max_overflow=0))
    try:
        while not stop.is_set():
            try:
                while True:
                    async with engine.begin() as conn:
                        purged = (await conn.execute(PURGE, {"limit": 5000})).scalar() or 0
                    if purged < 5000 or stop.is_set():
                        break
            except Exception:  # the database restarting: the next round catches up
                log.exception("idempotency key purge failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except TimeoutError:
                pass
    finally:
        await engine.dispose()


async def reap_leases(settings: Settings, stop: asyncio.Event) -> None:
    from tenant_api.runs.reaper import reap_periodically

    engine = create_api_engine(replace(settings.database, pool_size=1, max_overflow=0))
    try:
        await reap_periodically(engine, stop, settings.runners.reap_interval_seconds)
    finally:
        await engine.dispose()


async def deliver_webhooks(settings: Settings, stop: asyncio.Event) -> None:
    from tenant_api.webhooks.delivery import Deliverer
    from tenant_api.webhooks.signing import server_key

    if not (settings.webhooks.signing_key or settings.auth.jwt_secret):
        log.warning("neither WEBHOOK_SIGNING_KEY nor JWT_SECRET is set: webhook deliveries wait in the outbox")
        return
    hooks = settings.webhooks
    engine = create_api_engine(replace(settings.database, pool_size=hooks.concurrency + 1, max_overflow=0))
    deliverer = Deliverer(engine, hooks, server_key(hooks.signing_key, settings.auth.jwt_secret))
    try:
        await deliverer.run(stop)
    finally:
        await deliverer.aclose()
        await engine.dispose()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The scheduler process's duties besides the scheduler itself and audit sealing."""
    await asyncio.gather(reap_leases(settings, stop), deliver_webhooks(settings, stop),
                         purge_idempotency_keys(settings, stop))
