"""Leases that ran out go back to the queue (or fail after their last attempt).

Run by the scheduler process (tenant-api scheduler, and `make run`) every few seconds,
through one narrow SECURITY DEFINER function, auth.requeue_expired_runs
(policies/runners.sql): it spans organizations, and can only move running items whose
lease has expired. Any number of scheduler processes may run it (SKIP LOCKED).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("tenant_api.runs")

REQUEUE = text("select kind, organization_id, id, status, attempt from auth.requeue_expired_runs(:limit)")


async def reap_once(engine: AsyncEngine, limit: int = 100) -> list[Any]:
    """One transaction: requeue or fail up to ``limit`` items per kind. Returns them."""
    async with engine.begin() as conn:
        rows = (await conn.execute(REQUEUE, {"limit": limit})).all()
    for row in rows:
        log.info("%s %s: lease expired on attempt %d -> %s", row.kind, row.id, row.attempt, row.status)
    return list(rows)


async def reap_periodically(engine: AsyncEngine, stop: asyncio.Event, every: float) -> None:
    while not stop.is_set():
        try:
            while len(await reap_once(engine)) >= 100 and not stop.is_set():
                pass
        except Exception:  # the database restarting: the next round catches up
            log.exception("lease reaper failed; retrying in %.1fs", every)
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            pass
