"""The scheduler: turns due job schedules into queued jobs, exactly once.

``tenant-api scheduler`` runs it as its own process (``tenant-api dev`` also starts one
in a background thread). It connects as the scheduler process's own login (tenant_worker,
WORKER_DATABASE_URL; never the API role, which may not call these) and has no request
context, so it sees no tenant rows; everything goes through two SECURITY DEFINER
functions (policies/scheduler.sql). One tick is one transaction:

  1. ``auth.claim_due_schedules(batch)`` locks due schedules FOR UPDATE SKIP LOCKED
     (another scheduler skips them) and returns their cron, time zone, due time and
     the database's now();
  2. for each, the next run strictly after now() is computed here (croniter, in the
     schedule's time zone) and ``auth.fire_schedule`` advances the schedule, if it is
     still due at that time, and inserts the job, in the same transaction;
  3. COMMIT: both the job and the advance, or neither.

Any number of schedulers may run: they divide the due rows between them. After
downtime a schedule that missed several runs gets one job (for the first missed time),
then continues from the present. See docs/scheduler.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tenant_api.cron import CronError, next_run
from tenant_api.db.engine import create_api_engine
from tenant_api.errors import log_failure
from tenant_api.ops.metrics import SCHEDULER_ERRORS, SCHEDULER_FIRES, SCHEDULER_LATENESS
from tenant_api.ops.retention import purge_periodically
from tenant_api.settings import DatabaseSettings, Settings

log = logging.getLogger("tenant_api.scheduler")

CLAIM = text("select organization_id, schedule_id, cron, timezone, due_at, db_now"
             " from auth.claim_due_schedules(:limit)")
FIRE = text("select auth.fire_schedule(:org, :schedule, :due_at, :next_run_at)")


@dataclass
class Scheduler:
    engine: AsyncEngine
    batch: int = 100
    interval: float = 1.0
    fired: int = 0  # jobs created by this scheduler (for logs and tests)
    errors: deque[BaseException] = field(default_factory=lambda: deque(maxlen=100))  # the latest, for tests

    async def tick(self) -> int:
        """One transaction: claim up to ``batch`` due schedules and fire them. Returns
        how many were handled (== batch: more may be waiting; a failed one is not
        counted, so a batch of failures does not spin).

        Optimistic: the batch runs without savepoints (one round trip per schedule). If
        it fails, it is rolled back and redone with a savepoint per schedule, so one
        schedule that cannot be fired never holds back the others."""
        try:
            return await self._tick(careful=False)
        except DBAPIError:
            log.warning("scheduler batch failed; redoing it schedule by schedule", exc_info=True)
            return await self._tick(careful=True)

    async def _tick(self, careful: bool) -> int:
        handled, fired = 0, []
        async with self.engine.begin() as conn:
            due = (await conn.execute(CLAIM, {"limit": self.batch})).all()
            for row in due:
                try:
                    upcoming = next_run(row.cron, row.timezone, row.db_now)
                except CronError:
                    # Stored before a rule changed: run this once, then park it
                    # (next_run_at null) rather than retrying it every tick.
                    log.exception("schedule %s: cannot compute its next run; parking it", row.schedule_id)
                    upcoming = None
                params = {"org": row.organization_id, "schedule": row.schedule_id,
                          "due_at": row.due_at, "next_run_at": upcoming}
                if careful:
                    try:
                        async with conn.begin_nested():
                            job = (await conn.execute(FIRE, params)).scalar()
                    except DBAPIError as exc:
                        self.errors.append(exc)
                        SCHEDULER_ERRORS.inc()
                        log.exception("schedule %s: firing failed; retried at the next tick", row.schedule_id)
                        continue
                else:
                    job = (await conn.execute(FIRE, params)).scalar()
                handled += 1
                if job is not None:
                    fired.append((row, job, upcoming))
        # committed: only now are these jobs real
        self.fired += len(fired)
        SCHEDULER_FIRES.inc(len(fired))
        for row, job, upcoming in fired:
            SCHEDULER_LATENESS.observe(max((row.db_now - row.due_at).total_seconds(), 0.0))
            log.info("schedule %s due %s: job %s; next run %s", row.schedule_id, row.due_at.isoformat(), job,
                     upcoming.isoformat() if upcoming else "none")
        return handled

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set: drain what is due, then wait ``interval``."""
        while not stop.is_set():
            try:
                while await self.tick() >= self.batch and not stop.is_set():
                    pass
            except Exception as exc:  # the database restarting, a network blip: try again
                self.errors.append(exc)
                SCHEDULER_ERRORS.inc()
                log_failure(log, "scheduler tick failed; retrying in %.1fs", exc, self.interval)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass


def scheduler_engine(database: DatabaseSettings) -> AsyncEngine:
    """The scheduler process's engine (``database``: its own login), one connection: a
    tick is a single transaction."""
    return create_api_engine(replace(database, pool_size=1, max_overflow=0))


async def seal_periodically(database: DatabaseSettings, stop: asyncio.Event, every: float,
                            block_size: int = 1000) -> None:
    """The audit trail's background sealing (tenant_api.audit.sealing): off the request
    path, one short transaction per organization, skipping one another sealer holds."""
    from tenant_api.audit import sealing

    while not stop.is_set():
        try:
            await sealing.seal(database.url, block_size=block_size)
        except Exception as exc:  # the database restarting: the next round seals what is left
            log_failure(log, "audit sealing failed; retrying in %.0fs", exc, every)
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            pass


async def serve(database: DatabaseSettings, interval: float = 1.0, batch: int = 100,
                stop: asyncio.Event | None = None, seal_every: float = 60.0,
                settings: Settings | None = None) -> None:
    """Run a scheduler (and the audit sealer, retention, and the other background duties:
    tenant_api.background) until ``stop`` is set (or SIGINT/SIGTERM, when run as a process)."""
    from tenant_api import background

    engine = scheduler_engine(database)
    stop = stop or asyncio.Event()
    settings = (settings or Settings()).with_database(**vars(database))
    retention = settings.retention
    log.info("scheduler started (every %.1fs, batch %d; sealing the audit trail every %.0fs; retention every %.0fs;"
             " run leases, webhook deliveries, idempotency keys)", interval, batch, seal_every,
             retention.interval_seconds)
    # Retention has its own connection: a purge batch never delays a tick.
    retention_engine = scheduler_engine(database)
    try:
        await asyncio.gather(
            Scheduler(engine, batch=batch, interval=interval).run(stop),
            seal_periodically(database, stop, seal_every),
            purge_periodically(retention_engine, retention, stop),
            background.run(settings, stop),
        )
    finally:
        await engine.dispose()
        await retention_engine.dispose()
        log.info("scheduler stopped")


def main(database: DatabaseSettings, interval: float, batch: int, settings: Settings | None = None) -> None:
    """The ``tenant-api scheduler`` process. SIGINT/SIGTERM: it finishes the transaction
    in progress and exits. (A kill -9 mid-transaction is rolled back by PostgreSQL and
    the same runs are made by the next tick of any scheduler.)"""
    import signal

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(database, interval, batch, stop, settings=settings)

    asyncio.run(_run())


def start_in_thread(database: DatabaseSettings, interval: float = 1.0,
                    settings: Settings | None = None) -> tuple[threading.Thread, Callable[[], None]]:
    """For ``tenant-api dev``: a scheduler in a daemon thread with its own event loop.
    Returns the thread and a function that stops it."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def target() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(database, interval, stop=stop, settings=settings))
        loop.close()

    thread = threading.Thread(target=target, name="tenant-api-scheduler", daemon=True)
    thread.start()

    def stop_it() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(5.0)

    return thread, stop_it
