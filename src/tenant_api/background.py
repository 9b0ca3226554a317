"""Every background duty, and the only doors into the database each one uses.

The duties run with no request context (RLS shows them nothing), so each works through a
few narrow SECURITY DEFINER functions owned by tenant_auth (or tenant_audit). Each duty
has a NOLOGIN role of its own holding EXECUTE on exactly its functions (``DUTIES``: the
role, then the functions; policies/roles.sql, tests/security/test_catalog.py checks both
against the catalog), held by the login of the process that runs it. The API role may
call none of them.

Where they run: the invite mailer, the desktop reaper and the usage writer in each API
process (create_app), as tenant_api_jobs (JOBS_DATABASE_URL); everything else in the
scheduler process (``tenant-api scheduler``, and a thread of ``make run``: ``run``
below), as tenant_worker (WORKER_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from sqlalchemy import text

from tenant_api.db.engine import create_api_engine
from tenant_api.ops.retention import PURGES
from tenant_api.settings import Settings

log = logging.getLogger("tenant_api.background")

@dataclass(frozen=True)
class Duty:
    role: str  # the NOLOGIN role holding EXECUTE on the functions
    login: str  # the login of the process that runs it
    functions: tuple[str, ...]  # "<schema>.<name>"


WORKER, JOBS = "tenant_worker", "tenant_api_jobs"

DUTIES: dict[str, Duty] = {
    "job scheduler (scheduler.py)": Duty("tenant_duty_scheduler", WORKER,
                                         ("auth.claim_due_schedules", "auth.fire_schedule")),
    "audit sealer (audit/sealing.py)": Duty("tenant_duty_sealer", WORKER,
                                            ("app.audit_seal_candidates", "app.audit_seal")),
    "retention (ops/retention.py)": Duty("tenant_duty_retention", WORKER, tuple(p.function for p in PURGES)),
    "run lease reaper (runs/reaper.py)": Duty("tenant_duty_run_reaper", WORKER, ("auth.requeue_expired_runs",)),
    "webhook delivery (webhooks/delivery.py)": Duty("tenant_duty_webhooks", WORKER, (
        "auth.claim_webhook_deliveries", "auth.webhook_delivery_context", "auth.finish_webhook_delivery")),
    "idempotency key purge (below)": Duty("tenant_duty_idempotency", WORKER, ("auth.purge_idempotency_keys",)),
    "invite mailer (invites/mailer.py)": Duty("tenant_duty_mailer", JOBS,
                                              ("auth.claim_invite_mail", "auth.finish_invite_mail")),
    "desktop connection reaper (resources/desktop_connections.py)": Duty(
        "tenant_duty_desktop_reaper", JOBS, ("auth.reap_desktop_connections",)),
    "usage writer (audit/usage.py)": Duty("tenant_duty_usage", JOBS, ("app.record_usage",)),
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
