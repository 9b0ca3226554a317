"""The scheduler: exactly once with concurrent schedulers, restart safety, RLS and audit
attribution, and the `tenant-api scheduler` process."""

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from tenant_api.scheduler import CLAIM, FIRE, Scheduler, scheduler_engine
from tests.support.tenants import signup

# Crons whose next run is far away: the assertions count jobs, and a schedule that
# became due again during a test (a per-minute one crossing a minute) would add one.
DAILY = "0 0 * * *"
YEARLY = "0 0 1 1 *"
CMD = {"kind": "command", "ref": "report"}


@pytest.fixture(scope="module")
async def orgs(client):
    return [await signup(client), await signup(client)]


async def schedules(client, tenant, n, cron=DAILY):
    out = []
    for _ in range(n):
        r = await client.post("/v1/job-schedules", headers=tenant.token_auth, json={
            "project_id": tenant.project_id, "name": uuid.uuid4().hex, "cron": cron, "target": CMD})
        assert r.status_code == 201, r.text
        out.append(uuid.UUID(r.json()["id"]))
    return out


async def make_due(admin_conn, ids, when):
    await admin_conn.execute("update job_schedule set next_run_at = $1 where id = any($2)", when, ids)


async def jobs_of(admin_conn, ids):
    return await admin_conn.fetch(
        "select schedule_id, scheduled_for, status, organization_id, target from job"
        " where schedule_id = any($1) order by scheduled_for", ids)


async def drain(scheduler: Scheduler) -> None:
    for _ in range(1000):
        if not await scheduler.tick():
            return
    raise AssertionError("still finding due schedules after 1000 ticks")


async def test_two_concurrent_schedulers_fire_each_due_run_exactly_once(client, orgs, settings, admin_conn):
    ids = await schedules(client, orgs[0], 12, YEARLY) + await schedules(client, orgs[1], 12, YEARLY)
    engines = [scheduler_engine(settings.database.worker_database()), scheduler_engine(settings.database.worker_database())]
    # small batches so the two interleave many times within a round
    a, b = (Scheduler(e, batch=3) for e in engines)
    try:
        now = await admin_conn.fetchval("select now()")
        rounds = 6
        for r in range(rounds):
            # each round: every schedule due again, for a distinct past time
            await make_due(admin_conn, ids, now - dt.timedelta(hours=rounds - r))
            await asyncio.gather(drain(a), drain(b), drain(a), drain(b))
        rows = await jobs_of(admin_conn, ids)
    finally:
        for e in engines:
            await e.dispose()
    assert not a.errors and not b.errors
    per_schedule = {}
    for row in rows:
        per_schedule.setdefault(row["schedule_id"], []).append(row["scheduled_for"])
    assert set(per_schedule) == set(ids)
    expected = [now - dt.timedelta(hours=rounds - r) for r in range(rounds)]
    for sid, times in per_schedule.items():
        assert times == expected, sid  # one job per due time, none twice
    assert a.fired + b.fired == len(ids) * rounds
    assert a.fired and b.fired  # both really took part
    # and every schedule is now in the future: nothing left to fire
    late = await admin_conn.fetchval(
        "select count(*) from job_schedule where id = any($1) and next_run_at <= now()", ids)
    assert late == 0


async def test_fire_is_compare_and_set(client, orgs, settings, admin_conn):
    """Even without the claim's lock, a due time can be fired once: the second attempt
    finds next_run_at moved and creates nothing."""
    (sid,) = await schedules(client, orgs[0], 1)
    due = (await admin_conn.fetchval("select now()")) - dt.timedelta(minutes=5)
    await make_due(admin_conn, [sid], due)
    engine = scheduler_engine(settings.database.worker_database())
    org, other = uuid.UUID(orgs[0].organization_id), uuid.UUID(orgs[1].organization_id)
    later = text("select now() + interval '1 minute'")
    try:
        async with engine.begin() as conn:
            nxt = await conn.scalar(later)
            # the wrong organization for that schedule, or a stale due time: nothing, not even an advance
            assert await conn.scalar(FIRE, {"org": other, "schedule": sid, "due_at": due, "next_run_at": nxt}) is None
            stale = due - dt.timedelta(minutes=1)
            assert await conn.scalar(FIRE, {"org": org, "schedule": sid, "due_at": stale, "next_run_at": nxt}) is None
            assert await admin_conn.fetchval("select next_run_at from job_schedule where id = $1", sid) == due
            first = await conn.scalar(FIRE, {"org": org, "schedule": sid, "due_at": due, "next_run_at": nxt})
            second = await conn.scalar(FIRE, {"org": org, "schedule": sid, "due_at": due, "next_run_at": nxt})
            # the caller's context is restored: none (and the scheduler's login reads no table)
            assert await conn.scalar(text("select current_setting('backtrace_functions')")) == ""
            assert await conn.scalar(text("select coalesce(current_setting('app.organization_id', true), '')")) == ""
        assert first is not None and second is None
        # a next run that is not in the future is refused (it would be due again at once)
        await make_due(admin_conn, [sid], due)
        with pytest.raises(Exception, match="not after now"):
            async with engine.begin() as conn:
                await conn.scalar(FIRE, {"org": org, "schedule": sid, "due_at": due, "next_run_at": due})
        # due again at a time that already has its job (set back by hand): advanced, no second job
        sched = Scheduler(engine)
        await drain(sched)
        assert not sched.errors
        assert await admin_conn.fetchval("select next_run_at > now() from job_schedule where id = $1", sid)
    finally:
        await engine.dispose()
    assert len(await jobs_of(admin_conn, [sid])) == 1


async def test_claim_skips_rows_another_scheduler_holds(client, orgs, settings, admin_conn):
    ids = await schedules(client, orgs[0], 4)
    await make_due(admin_conn, ids, (await admin_conn.fetchval("select now()")) - dt.timedelta(minutes=1))
    engines = [scheduler_engine(settings.database.worker_database()), scheduler_engine(settings.database.worker_database())]
    try:
        async with engines[0].begin() as first, engines[1].begin() as second:
            mine = {r.schedule_id for r in (await first.execute(CLAIM, {"limit": 1000})).all()}
            assert set(ids) <= mine
            # the second scheduler neither waits nor gets them
            theirs = await asyncio.wait_for(second.execute(CLAIM, {"limit": 1000}), timeout=5)
            assert not {r.schedule_id for r in theirs.all()} & set(ids)
    finally:
        for e in engines:
            await e.dispose()
    # nothing fired, nothing advanced: both transactions only claimed
    assert await admin_conn.fetchval(
        "select count(*) from job_schedule where id = any($1) and next_run_at <= now()", ids) == 4
    assert not await jobs_of(admin_conn, ids)
    await make_due(admin_conn, ids, (await admin_conn.fetchval("select now()")) + dt.timedelta(days=1))


async def test_one_failing_schedule_does_not_hold_back_the_others(client, orgs, settings, admin_conn):
    """A schedule whose job cannot be inserted (here: a trigger planted by a superuser)
    fails alone: the batch is redone schedule by schedule and the others fire."""
    poison, *good = await schedules(client, orgs[0], 3)
    due = (await admin_conn.fetchval("select now()")) - dt.timedelta(hours=1)
    await make_due(admin_conn, [poison], due - dt.timedelta(minutes=1))  # first in claim order
    await make_due(admin_conn, good, due)
    await admin_conn.execute(f"""
        create function public.test_poison() returns trigger language plpgsql as $$
        begin raise exception 'poisoned'; end $$;
        create trigger test_poison before insert on job for each row
          when (new.schedule_id = '{poison}') execute function public.test_poison();""")
    engine = scheduler_engine(settings.database.worker_database())
    try:
        sched = Scheduler(engine)
        await sched.tick()  # (may also fire due schedules other tests left behind)
        assert sched.fired >= 2 and len(sched.errors) == 1 and "poisoned" in str(sched.errors[0])
        assert {r["schedule_id"] for r in await jobs_of(admin_conn, [poison, *good])} == set(good)
        # the failing one stays due, to be retried
        assert await admin_conn.fetchval("select next_run_at from job_schedule where id = $1", poison) < due
    finally:
        await admin_conn.execute("drop trigger test_poison on job; drop function public.test_poison()")
        await engine.dispose()
    await make_due(admin_conn, [poison], (await admin_conn.fetchval("select now()")) + dt.timedelta(days=1))


async def test_restart_runs_missed_schedule_once(client, orgs, settings, admin_conn):
    (sid,) = await schedules(client, orgs[0], 1)
    engine = scheduler_engine(settings.database.worker_database())

    async def run_until(predicate):
        stop = asyncio.Event()
        sched = Scheduler(engine, interval=0.02)
        task = asyncio.create_task(sched.run(stop))
        try:
            for _ in range(500):
                if await predicate():
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the scheduler did not get there")
            await asyncio.sleep(0.2)  # several more ticks: nothing else may happen
        finally:
            stop.set()
            await task
        assert not sched.errors

    async def count():
        return len(await jobs_of(admin_conn, [sid]))

    try:
        now = await admin_conn.fetchval("select now()")
        first_due = now - dt.timedelta(seconds=1)
        await make_due(admin_conn, [sid], first_due)
        await run_until(lambda: _at_least(count, 1))
        assert await count() == 1

        # A crash mid-transaction (claimed and fired, never committed) leaves no trace.
        missed = now - dt.timedelta(days=3)  # three runs of a daily schedule missed
        await make_due(admin_conn, [sid], missed)
        async with engine.connect() as conn:
            trans = await conn.begin()
            row = next(r for r in (await conn.execute(CLAIM, {"limit": 1000})).all() if r.schedule_id == sid)
            nxt = await conn.scalar(text("select now() + interval '1 minute'"))
            assert await conn.scalar(FIRE, {"org": row.organization_id, "schedule": row.schedule_id,
                                            "due_at": row.due_at, "next_run_at": nxt}) is not None
            await trans.rollback()
        assert await count() == 1

        # Down for three days of a daily schedule: one run on restart, then the present.
        await run_until(lambda: _at_least(count, 2))
        rows = await jobs_of(admin_conn, [sid])
        assert [r["scheduled_for"] for r in rows] == [missed, first_due]
        assert {r["status"] for r in rows} == {"queued"}
        nxt, db_now = await admin_conn.fetchrow("select next_run_at, now() from job_schedule where id = $1", sid)
        assert db_now < nxt <= db_now + dt.timedelta(days=1) and (nxt.hour, nxt.minute) == (0, 0)
    finally:
        await engine.dispose()


async def _at_least(count, n):
    return await count() >= n


async def test_scheduler_jobs_are_attributed_and_isolated(client, orgs, settings, admin_conn):
    (sid,) = await schedules(client, orgs[1], 1)
    due = (await admin_conn.fetchval("select now()")) - dt.timedelta(minutes=1)
    await make_due(admin_conn, [sid], due)
    engine = scheduler_engine(settings.database.worker_database())
    try:
        await drain(Scheduler(engine))
    finally:
        await engine.dispose()
    (job,) = await admin_conn.fetch("select id, organization_id, project_id from job where schedule_id = $1", sid)
    assert str(job["organization_id"]) == orgs[1].organization_id and str(job["project_id"]) == orgs[1].project_id
    audit = await admin_conn.fetch(
        "select organization_id::text, token_id, user_id, request_id, action from token_audit_log"
        " where table_name = 'job' and row_id = $1", job["id"])
    assert [tuple(r) for r in audit] == [(orgs[1].organization_id, None, None, f"scheduler:{sid}", "INSERT")]
    # advancing the schedule is not a change anyone made: no audit row for it
    assert await admin_conn.fetchval(
        "select count(*) from token_audit_log where table_name = 'job_schedule' and row_id = $1"
        " and action = 'UPDATE'", sid) == 0
    # visible through the API to its organization only
    r = await client.get(f"/v1/jobs?schedule_id={sid}", headers=orgs[1].token_auth)
    assert [i["id"] for i in r.json()["items"]] == [str(job["id"])]
    assert r.json()["items"][0]["target"] == {**CMD, "args": None}
    r = await client.get(f"/v1/jobs/{job['id']}", headers=orgs[0].token_auth)
    assert r.status_code == 404


async def test_api_role_cannot_write_jobs_of_a_schedule_directly(api_conn, orgs):
    """The scheduler's insert policy belongs to tenant_auth (inside fire_schedule); the
    API role with no context can neither see nor create anything."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.execute(
            "insert into job (organization_id, project_id, target) values ($1, $2, '{\"kind\":\"command\",\"ref\":\"x\"}')",
            uuid.UUID(orgs[0].organization_id), uuid.UUID(orgs[0].project_id))
    assert await api_conn.fetchval("select count(*) from job_schedule") == 0
    assert await api_conn.execute("update job_schedule set next_run_at = now()") == "UPDATE 0"


async def test_scheduler_process(client, orgs, database, admin_conn):
    """`tenant-api scheduler` as its own process: fires a due schedule, stops on SIGTERM."""
    (sid,) = await schedules(client, orgs[0], 1)
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "WORKER_DATABASE_URL": database.worker_url, "PYTHONPATH": str(src)}
    proc = subprocess.Popen([sys.executable, "-m", "tenant_api.cli", "scheduler", "--interval", "0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await make_due(admin_conn, [sid], (await admin_conn.fetchval("select now()")) - dt.timedelta(seconds=1))
        for _ in range(1000):
            if await jobs_of(admin_conn, [sid]) or proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert len(await jobs_of(admin_conn, [sid])) == 1, out
    assert "scheduler started" in out and f"schedule {sid}" in out and "scheduler stopped" in out


async def test_scheduler_process_seals_the_audit_trail_in_the_background(client, settings, admin_conn):
    """The scheduler also seals audit events (issue 5: sealing runs off the request path)."""
    from tenant_api.scheduler import serve

    t = await signup(client)
    org = uuid.UUID(t.organization_id)
    before = await admin_conn.fetchval("select count(*) from audit_seal where organization_id = $1", org)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings.database.worker_database(), interval=0.2, stop=stop, seal_every=0.2))
    try:
        for _ in range(100):
            if await admin_conn.fetchval("select count(*) from audit_seal where organization_id = $1", org) > before:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the scheduler sealed nothing of a fresh organization's audit trail")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    r = await client.get("/v1/audit/verify", headers=t.token_auth)
    assert r.status_code == 200, r.text
