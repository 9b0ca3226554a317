"""The runner protocol (docs/runners.md): claims exactly once under real concurrency, long
polls woken by NOTIFY, leases, the holder's rights, re-queueing after a lost lease, the
database's own enforcement, filters, scopes, isolation and the audit trail.

The concurrent tests talk to a real server (uvicorn on a loopback port, tests/support/live.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from collections import Counter

import asyncpg
import httpx
import pytest

from tenant_api.app import create_app
from tenant_api.db.engine import create_api_engine
from tenant_api.runs.reaper import reap_once
from tests.support.tenants import bearer, make_token, signup
from tests.support.live import serve
from tests.support.security import as_request

U = uuid.UUID
CMD = {"kind": "command", "ref": "true"}


@dataclasses.dataclass
class Live:
    url: str
    app: object


@pytest.fixture(scope="module")
def live(settings):
    app = create_app(settings)
    with serve(app) as url:
        yield Live(url, app)


@pytest.fixture
async def http(live):
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        yield c


async def new_job(client, tenant, **extra) -> dict:
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={"project_id": tenant.project_id, "target": CMD, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def runner_token(client, tenant, scopes=("tasks:write",), **extra) -> tuple[dict[str, str], str]:
    token = await make_token(client, tenant, list(scopes), **extra)
    return bearer(token["token"]), token["id"]


async def reap(settings) -> list:
    engine = create_api_engine(settings.database.worker_database())  # the scheduler process's login
    try:
        return await reap_once(engine)
    finally:
        await engine.dispose()


async def claim(client, headers, expect: int = 200, **body) -> dict | None:
    r = await client.post("/v1/jobs/claim", headers=headers, json=body)
    assert r.status_code == expect, r.text
    return r.json() if expect == 200 else None


# --- exactly once ------------------------------------------------------------------------

async def test_twenty_claimers_share_a_hundred_jobs_exactly_once(client, live, admin_conn):
    t = await signup(client)
    runner, runner_id = await runner_token(client, t)
    ids = set()
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        made = await asyncio.gather(*(c.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "target": CMD})
                                      for _ in range(100)))
    assert all(r.status_code == 201 for r in made)
    ids = {r.json()["id"] for r in made}
    claimed: list[str] = []
    finished: list[str] = []

    async def claimer() -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
            while True:
                r = await c.post("/v1/jobs/claim", headers=runner, json={})
                if r.status_code == 204:
                    return
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["attempt"] == 1 and body["claim_secret"].startswith("trun_")
                claimed.append(body["job"]["id"])
                r = await c.post(f"/v1/jobs/{body['job']['id']}/finish", headers=runner,
                                 json={"claim_secret": body["claim_secret"], "exit_code": 0})
                assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
                finished.append(body["job"]["id"])

    await asyncio.gather(*(claimer() for _ in range(20)))
    assert len(claimed) == 100 and set(claimed) == ids, Counter(claimed).most_common(3)
    assert sorted(finished) == sorted(claimed)
    rows = await admin_conn.fetch("select status, attempt, exit_code, claimed_by_token_id from job"
                                  " where organization_id = $1", U(t.organization_id))
    assert len(rows) == 100
    assert {(r["status"], r["attempt"], r["exit_code"], str(r["claimed_by_token_id"])) for r in rows} == {
        ("succeeded", 1, 0, runner_id)}
    # The audit trail: one claim and one finish per job, both by the runner's token.
    moves = await admin_conn.fetch(
        "select row_id, changes -> 'status' ->> 'new' as status, token_id from token_audit_log"
        " where organization_id = $1 and table_name = 'job' and action = 'UPDATE'", U(t.organization_id))
    assert Counter((r["row_id"], r["status"]) for r in moves) == Counter(
        {(U(i), s): 1 for i in ids for s in ("running", "succeeded")})
    assert {str(r["token_id"]) for r in moves} == {runner_id}


async def test_a_waiting_claim_is_woken_by_a_new_job(client, live, http):
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    started = time.monotonic()
    r = await http.post("/v1/jobs/claim", headers=runner, json={"wait_seconds": 1})
    assert r.status_code == 204 and 1 <= time.monotonic() - started < 4  # waited, found nothing

    waiting = asyncio.create_task(http.post("/v1/jobs/claim", headers=runner, json={"wait_seconds": 20}))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    job = await new_job(client, t)
    queued_at = time.monotonic()
    r = await waiting
    # Woken by the notification, not by the periodic re-check (every 5 s).
    assert r.status_code == 200 and r.json()["job"]["id"] == job["id"], r.text
    assert time.monotonic() - queued_at < 2.5
    hub = live.app.state.run_queue
    assert hub.listening and hub.notifications >= 1


async def test_a_waiting_claim_ends_when_its_runner_hangs_up(client, live):
    """A runner that stops (its connection closes) leaves no claim waiting on the server:
    nothing is claimed for nobody."""
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    hub = live.app.state.run_queue
    key = (U(t.organization_id), "job")
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        waiting = asyncio.create_task(c.post("/v1/jobs/claim", headers=runner, json={"wait_seconds": 25}))
        deadline = time.monotonic() + 5
        while not hub.has_subscribers(key):
            assert time.monotonic() < deadline, "the claim never waited"
            await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    deadline = time.monotonic() + 5
    while hub.has_subscribers(key):
        assert time.monotonic() < deadline, "the server kept waiting for a runner that left"
        await asyncio.sleep(0.05)
    job = await new_job(client, t)
    await asyncio.sleep(0.3)
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=t.token_auth)).json()["status"] == "queued"


async def test_the_server_caps_a_claim_s_wait(client, settings):
    """RUNNER_MAX_WAIT_SECONDS bounds every long poll, whatever wait_seconds asks (the
    fuzzing suites rely on it)."""
    from tenant_api.settings import Settings

    assert Settings.from_env({"RUNNER_MAX_WAIT_SECONDS": "2.5"}).runners.max_wait_seconds == 2.5
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    with serve(create_app(settings.with_runners(max_wait_seconds=0.5))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            started = time.monotonic()
            r = await c.post("/v1/jobs/claim", headers=runner, json={"wait_seconds": 30})
            waited = time.monotonic() - started
    assert r.status_code == 204 and 0.5 <= waited < 5, waited


# --- the holder's rights -------------------------------------------------------------------

async def test_only_the_holder_writes_and_finishes_once(client, http, admin_conn):
    t = await signup(client)
    runner, runner_id = await runner_token(client, t)
    other, _ = await runner_token(client, t)
    job = await new_job(client, t)
    c = await claim(http, runner, lease_seconds=30)
    secret, base = c["claim_secret"], f"/v1/jobs/{job['id']}"
    assert c["job"]["status"] == "running" and c["job"]["claimed_by_token_id"] == runner_id
    assert c["heartbeat_seconds"] == 10 and c["max_attempts"] == 3
    stored = await admin_conn.fetchval("select claim_secret_hash from job where id = $1", U(job["id"]))
    assert stored == hashlib.sha256(secret.encode()).digest()  # only its hash is kept

    # Heartbeats extend the lease and carry progress; a wrong secret (even another runner
    # of the same organization with the same scopes) is refused.
    r = await http.post(f"{base}/heartbeat", headers=runner,
                        json={"claim_secret": secret, "lease_seconds": 120,
                              "progress": {"percent": 40, "message": "half"}})
    assert r.status_code == 200 and r.json()["progress"] == {"percent": 40, "message": "half"}
    assert r.json()["lease_expires_at"] > c["lease_expires_at"]
    for who, sec in ((other, secret[:-1] + ("A" if secret[-1] != "A" else "B")), (runner, "nonsense")):
        for path, body in (("heartbeat", {}), ("logs", {"data": "x"}), ("finish", {"exit_code": 0})):
            r = await http.post(f"{base}/{path}", headers=who, json={"claim_secret": sec, **body})
            assert r.status_code == 409 and "another claim" in r.json()["detail"], (path, r.text)
    # ... while the right secret works from any credential of the organization's runners
    r = await http.post(f"{base}/logs", headers=other, json={"claim_secret": secret, "data": "line 1\n"})
    assert r.status_code == 201 and r.json()["attempt"] == 1

    r = await http.post(f"{base}/finish", headers=runner, json={"claim_secret": secret})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "exit_code"
    r = await http.post(f"{base}/finish", headers=runner, json={"claim_secret": secret, "exit_code": 2,
                                                                "error": "disk full"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["exit_code"], r.json()["error"]) == ("failed", 2, "disk full")
    # Exactly once; then the log is closed too.
    for path, body in (("finish", {"exit_code": 0}), ("logs", {"data": "late"}), ("heartbeat", {})):
        r = await http.post(f"{base}/{path}", headers=runner, json={"claim_secret": secret, **body})
        assert r.status_code == 409 and r.json()["current_status"] == "failed", (path, r.text)
        assert "finished (failed)" in r.json()["detail"]
    logs = (await http.get(f"{base}/logs", headers=runner)).json()
    assert [c["data"] for c in logs["items"]] == ["line 1\n"] and logs["job_status"] == "failed"
    # Nothing claims a finished job; a queued one is claimed once.
    assert await claim(http, runner, expect=204) is None


@pytest.mark.parametrize("exit_code,error,status", [(0, None, "succeeded"), (1, None, "failed"),
                                                    (-9, None, "failed"), (None, "no such command", "failed"),
                                                    (0, "crashed after writing", "failed")])
async def test_exit_code_and_error_decide_the_outcome(client, http, exit_code, error, status):
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    job = await new_job(client, t)
    c = await claim(http, runner)
    body = {k: v for k, v in (("exit_code", exit_code), ("error", error)) if v is not None}
    r = await http.post(f"/v1/jobs/{job['id']}/finish", headers=runner,
                        json={"claim_secret": c["claim_secret"], **body})
    assert r.status_code == 200 and r.json()["status"] == status, r.text
    assert r.json()["lease_expires_at"] is None and r.json()["finished_at"] is not None


async def test_cancelling_a_running_job_stops_its_runner(client, http):
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    job = await new_job(client, t)
    c = await claim(http, runner)
    r = await client.patch(f"/v1/jobs/{job['id']}", headers=t.token_auth, json={"status": "cancelled"})
    assert r.status_code == 200 and r.json()["lease_expires_at"] is None
    r = await http.post(f"/v1/jobs/{job['id']}/heartbeat", headers=runner, json={"claim_secret": c["claim_secret"]})
    assert r.status_code == 409 and r.json()["current_status"] == "cancelled"


# --- leases ----------------------------------------------------------------------------------

async def test_a_lost_lease_goes_back_to_the_queue_and_the_old_holder_is_refused(client, http, settings, admin_conn):
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    job = await new_job(client, t)
    first = await claim(http, runner, lease_seconds=1)
    old, base = first["claim_secret"], f"/v1/jobs/{job['id']}"
    assert (await http.post(f"{base}/logs", headers=runner, json={"claim_secret": old, "data": "one\n"})
            ).status_code == 201
    await asyncio.sleep(1.3)
    # Expired, not yet reaped: the holder has lost it already.
    r = await http.post(f"{base}/heartbeat", headers=runner, json={"claim_secret": old})
    assert r.status_code == 409 and "lease" in r.json()["detail"]
    assert job["id"] in {str(r.id) for r in await reap(settings)}
    row = (await client.get(base, headers=t.token_auth)).json()
    assert (row["status"], row["attempt"], row["lease_expires_at"], row["started_at"]) == ("queued", 1, None, None)

    second = await claim(http, runner, lease_seconds=30)
    assert second["job"]["id"] == job["id"] and second["attempt"] == 2
    for path, body in (("heartbeat", {}), ("logs", {"data": "stale"}), ("finish", {"exit_code": 0})):
        r = await http.post(f"{base}/{path}", headers=runner, json={"claim_secret": old, **body})
        assert r.status_code == 409 and r.json()["attempt"] == 2, (path, r.text)
    r = await http.post(f"{base}/logs", headers=runner, json={"claim_secret": second["claim_secret"], "data": "two\n"})
    assert r.status_code == 201 and r.json()["attempt"] == 2
    r = await http.post(f"{base}/finish", headers=runner, json={"claim_secret": second["claim_secret"], "exit_code": 0})
    assert r.status_code == 200 and r.json()["status"] == "succeeded" and r.json()["attempt"] == 2
    logs = (await http.get(f"{base}/logs", headers=runner)).json()["items"]
    assert [(c["attempt"], c["data"]) for c in logs] == [(1, "one\n"), (2, "two\n")]
    # The requeue is the system's, in the job's organization.
    requeue = await admin_conn.fetchrow(
        "select token_id, request_id from token_audit_log where table_name = 'job' and row_id = $1"
        " and changes -> 'status' ->> 'new' = 'queued'", U(job["id"]))
    assert requeue["token_id"] is None and requeue["request_id"] == "lease-reaper"


async def test_the_last_attempt_fails_when_its_lease_runs_out(client, http, settings):
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    s = await client.post("/v1/job-schedules", headers=t.token_auth, json={
        "project_id": t.project_id, "name": "once", "cron": "0 0 1 1 *", "target": CMD, "max_attempts": 1})
    assert s.status_code == 201 and s.json()["max_attempts"] == 1
    job = (await client.post("/v1/jobs", headers=t.token_auth, json={"schedule_id": s.json()["id"]})).json()
    assert job["max_attempts"] == 1
    await claim(http, runner, lease_seconds=1)
    await asyncio.sleep(1.2)
    await reap(settings)
    row = (await client.get(f"/v1/jobs/{job['id']}", headers=t.token_auth)).json()
    assert (row["status"], row["error"], row["attempt"]) == ("failed", "lease expired on attempt 1 of 1", 1)
    assert row["finished_at"] is not None
    assert await claim(http, runner, expect=204) is None


# --- filters, scopes, isolation -------------------------------------------------------------

async def test_filters_choose_what_a_runner_takes(client, http):
    t = await signup(client)
    runner, _ = await runner_token(client, t)
    other_project = (await client.post("/v1/projects", headers=t.token_auth,
                                       json={"workspace_id": t.workspace_id, "name": "runners-other"})).json()["id"]
    plain = await new_job(client, t)
    gpu = await new_job(client, t, labels=["gpu", "linux"])
    workflow = await new_job(client, t, target={"kind": "workflow", "ref": "nightly"})
    elsewhere = await new_job(client, t, project_id=other_project)

    # labels: a job's labels must all be the runner's (an unlabelled job fits every runner)
    got = await claim(http, runner, labels=["linux"], kinds=["command"])
    assert got["job"]["id"] == plain["id"]
    assert await claim(http, runner, expect=204, labels=["linux"], kinds=["command"],
                       project_ids=[t.project_id]) is None
    got = await claim(http, runner, labels=["linux", "gpu", "x"], kinds=["command"], project_ids=[t.project_id])
    assert got["job"]["id"] == gpu["id"]
    got = await claim(http, runner, kinds=["workflow"])
    assert got["job"]["id"] == workflow["id"]
    got = await claim(http, runner, project_ids=[other_project])
    assert got["job"]["id"] == elsewhere["id"]
    # a project this credential cannot see is a 422 naming the field (where it may read
    # projects: org:read), not an empty result; a bare tasks:write runner just finds nothing
    stranger = await signup(client)
    r = await http.post("/v1/jobs/claim", headers=t.token_auth, json={"project_ids": [stranger.project_id]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_ids"
    assert await claim(http, runner, expect=204, project_ids=[stranger.project_id]) is None
    r = await http.post("/v1/jobs/claim", headers=runner, json={"wait_seconds": 31})
    assert r.status_code == 422


async def test_runners_see_only_their_organization_and_projects(client, http):
    a, b = await signup(client), await signup(client)
    b_job = await new_job(client, b)
    runner_a, _ = await runner_token(client, a)
    assert await claim(http, runner_a, expect=204) is None  # B's queued job is not A's to run
    r = await http.post(f"/v1/jobs/{b_job['id']}/heartbeat", headers=runner_a, json={"claim_secret": "x"})
    assert r.status_code == 404
    # a runner restricted to a project takes that project's jobs only
    other_project = (await client.post("/v1/projects", headers=a.token_auth,
                                       json={"workspace_id": a.workspace_id, "name": "restricted"})).json()["id"]
    mine = await new_job(client, a, project_id=other_project)
    await new_job(client, a)
    restricted, _ = await runner_token(client, a, project_ids=[other_project])
    got = await claim(http, restricted)
    assert got["job"]["id"] == mine["id"]
    assert await claim(http, restricted, expect=204) is None
    r = await http.post("/v1/jobs/claim", headers=restricted, json={"project_ids": [a.project_id]})
    assert r.status_code == 422  # not visible to it
    assert (await client.get(f"/v1/jobs/{b_job['id']}", headers=b.token_auth)).json()["status"] == "queued"


async def test_a_service_account_runs_its_projects_jobs(client, http, admin_conn):
    """A service account is the natural runner identity (docs/runners.md): not a person's
    token. Its project restriction is the runner's reach; the claim and the finish are
    audited as the service account; deleting it stops the runner at its next request."""
    t = await signup(client)
    r = await client.post("/v1/projects", headers=t.token_auth, json={"workspace_id": t.workspace_id, "name": "elsewhere"})
    assert r.status_code == 201, r.text
    elsewhere = r.json()["id"]
    r = await client.post("/v1/service-accounts", headers=t.token_auth,
                          json={"name": "runner-eu-1", "role": "member", "project_ids": [t.project_id]})
    assert r.status_code == 201, r.text
    sa = r.json()
    r = await client.post(f"/v1/service-accounts/{sa['id']}/tokens", headers=t.token_auth,
                          json={"name": "runner", "scopes": ["tasks:write"]})
    assert r.status_code == 201, r.text
    runner, runner_id = bearer(r.json()["token"]), r.json()["id"]
    assert r.json()["project_ids"] == [t.project_id]  # the account's restriction, inherited
    outside = (await client.post("/v1/jobs", headers=t.token_auth,
                                 json={"project_id": elsewhere, "target": CMD})).json()
    job = await new_job(client, t)

    c = await claim(http, runner)
    assert c["job"]["id"] == job["id"] and c["job"]["claimed_by_token_id"] == runner_id
    assert await claim(http, runner, expect=204) is None  # the other project's job is out of its reach
    r = await http.post(f"/v1/jobs/{job['id']}/finish", headers=runner,
                        json={"claim_secret": c["claim_secret"], "exit_code": 0})
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    audit = await admin_conn.fetch(
        "select changes -> 'status' ->> 'new' as status, user_id, token_id from token_audit_log"
        " where table_name = 'job' and row_id = $1 and action = 'UPDATE' order by id", U(job["id"]))
    assert [(a["status"], str(a["user_id"]), str(a["token_id"])) for a in audit] == [
        ("running", sa["user_id"], runner_id), ("succeeded", sa["user_id"], runner_id)]

    # Deleting the service account stops its runner: 401 at the next request.
    second = await new_job(client, t)
    c = await claim(http, runner)
    assert c["job"]["id"] == second["id"]
    assert (await client.delete(f"/v1/service-accounts/{sa['id']}", headers=t.token_auth)).status_code == 204
    r = await http.post(f"/v1/jobs/{second['id']}/heartbeat", headers=runner, json={"claim_secret": c["claim_secret"]})
    assert r.status_code == 401
    assert (await client.get(f"/v1/jobs/{outside['id']}", headers=t.token_auth)).json()["status"] == "queued"


async def test_scopes(client, http):
    t = await signup(client)
    reader, _ = await runner_token(client, t, ["tasks:read"])
    robot, _ = await runner_token(client, t, ["desktops:write"])
    for headers, path, scope in ((reader, "/v1/jobs/claim", "tasks:write"),
                                 (reader, "/v1/computer-use-tasks/claim", "tasks:write"),
                                 (robot, "/v1/jobs/claim", "tasks:write"),
                                 (reader, "/v1/robot-macro-executions/claim", "desktops:write")):
        r = await http.post(path, headers=headers, json={})
        assert r.status_code == 403 and r.json()["missing_scope"] == scope, (path, r.text)
    r = await http.post("/v1/robot-macro-executions/claim", headers=robot, json={})
    assert r.status_code == 204
    r = await http.post("/v1/jobs/claim", json={})
    assert r.status_code == 401


async def test_computer_use_tasks_and_executions_are_claimed_the_same_way(client, http, settings):
    t = await signup(client)
    worker, _ = await runner_token(client, t, ["tasks:write", "desktops:write"])
    config = (await client.post("/v1/desktop-configs", headers=t.token_auth,
                                json={"project_id": t.project_id, "name": "c", "image": "ubuntu"})).json()
    vm = (await client.post("/v1/desktop-vms", headers=t.token_auth, json={"config_id": config["id"], "name": "vm"})).json()
    await client.post(f"/v1/desktop-vms/{vm['id']}/start", headers=t.token_auth)
    other_vm = (await client.post("/v1/desktop-vms", headers=t.token_auth,
                                  json={"config_id": config["id"], "name": "vm2"})).json()
    cut = (await client.post("/v1/computer-use-tasks", headers=t.token_auth, json={
        "project_id": t.project_id, "instruction": "open", "desktop_vm_id": vm["id"]})).json()
    macro = (await client.post("/v1/robot-macros", headers=t.token_auth,
                               json={"project_id": t.project_id, "name": "m", "vm_id": vm["id"]})).json()
    execution = (await client.post(f"/v1/robot-macros/{macro['id']}/executions", headers=t.token_auth,
                                   json={"max_attempts": 2})).json()
    assert execution["status"] == "queued" and execution["max_attempts"] == 2

    r = await http.post("/v1/computer-use-tasks/claim", headers=worker, json={"desktop_vm_ids": [other_vm["id"]]})
    assert r.status_code == 204
    r = await http.post("/v1/computer-use-tasks/claim", headers=worker, json={"desktop_vm_ids": [vm["id"]]})
    assert r.status_code == 200 and r.json()["computer_use_task"]["id"] == cut["id"]
    r = await http.post("/v1/robot-macro-executions/claim", headers=worker, json={"vm_ids": [vm["id"]],
                                                                              "lease_seconds": 1})
    assert r.status_code == 200 and r.json()["execution"]["id"] == execution["id"], r.text
    old = r.json()["claim_secret"]
    await asyncio.sleep(1.2)
    await reap(settings)  # lost: back to the queue, attempt 2 of 2 next
    r = await http.post("/v1/robot-macro-executions/claim", headers=worker, json={"vm_ids": [vm["id"]]})
    assert r.status_code == 200 and r.json()["attempt"] == 2
    new = r.json()["claim_secret"]
    url = f"/v1/robot-macro-executions/{execution['id']}/finish"
    assert (await http.post(url, headers=worker, json={"claim_secret": old, "exit_code": 0})).status_code == 409
    r = await http.post(url, headers=worker, json={"claim_secret": new, "error": "button not found",
                                                   "output": {"step": 3}})
    assert r.status_code == 200 and (r.json()["status"], r.json()["output"]) == ("failed", {"step": 3})


# --- the database holds the same rules ------------------------------------------------------

async def test_the_database_enforces_the_protocol(client, http, api_conn, admin_conn):
    """Any path (here the API role over raw SQL, with a runner's context): no running
    without a claim, no outcome that contradicts the status, no claim changing hands, no
    requeue of a live lease, no log for a finished job."""
    t = await signup(client)
    runner = await make_token(client, t, ["tasks:write"])
    queued = await new_job(client, t)

    async def refused(sql: str, *args, match: str) -> None:
        async with as_request(api_conn, runner["token"]):
            with pytest.raises(asyncpg.CheckViolationError, match=match):
                await api_conn.execute(sql, *args)

    await refused("update job set status = 'running' where id = $1", U(queued["id"]),
                  match="starts running only when a runner claims it")
    await refused("update job set status = 'running', attempt = 1, lease_expires_at = now() + interval '1 minute',"
                  " claim_secret_hash = sha256('x'), claimed_by_token_id = $2 where id = $1",
                  U(queued["id"]), U(t.token_id), match="starts running only when a runner claims it")  # not its token
    c = await claim(http, bearer(runner["token"]))
    job = U(c["job"]["id"])
    clear = "lease_expires_at = null, claim_secret_hash = null"
    await refused(f"update job set status = 'succeeded', exit_code = 1, {clear} where id = $1", job,
                  match="succeeds with exit code 0")
    await refused(f"update job set status = 'failed', exit_code = 0, {clear} where id = $1", job,
                  match="needs an exit code other than 0 or an error")
    await refused(f"update job set status = 'queued', {clear} where id = $1", job,
                  match="only once its lease has expired")
    await refused("update job set claim_secret_hash = sha256('mine') where id = $1", job, match="cannot change hands")
    await refused("update job set attempt = 7 where id = $1", job, match="attempt number")
    await refused("update job set status = 'succeeded', exit_code = 0 where id = $1", job,
                  match="job_(lease|claim)_check")
    async with as_request(api_conn, runner["token"]):  # the control: a proper finish passes
        await api_conn.execute(f"update job set status = 'succeeded', exit_code = 0, {clear} where id = $1", job)
        with pytest.raises(asyncpg.CheckViolationError, match="only its running attempt appends logs"):
            await api_conn.execute("insert into job_log (organization_id, project_id, job_id, seq, attempt, data)"
                                   " values ($1, $2, $3, 99, 1, 'late')", U(t.organization_id), U(t.project_id), job)
    # (rolled back: the job is still running, its claim's to finish)
    assert await admin_conn.fetchval("select status from job where id = $1", job) == "running"
