"""Job schedules (cron validation, next_run_at), jobs (manual runs, lifecycle, exit codes)
and job logs (append, tail), with isolation, scopes and audit."""

import asyncio
import datetime as dt
import json
import uuid
from zoneinfo import ZoneInfo


from tests.support.tenants import bearer, make_token
from tests.support.rows import move

UTC = dt.UTC
CMD = {"kind": "command", "ref": "backup", "args": ["--full"]}
YEARLY = "0 0 1 1 *"  # never due during the suite: schedules here must not be fired by test_scheduler's loops


async def new_schedule(client, tenant, **extra):
    body = {"project_id": tenant.project_id, "name": uuid.uuid4().hex, "cron": YEARLY, "target": CMD, **extra}
    r = await client.post("/v1/job-schedules", headers=tenant.token_auth, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def new_job(client, tenant, **extra):
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={"project_id": tenant.project_id, "target": CMD, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def claim_job(client, tenant, job_id: str, headers=None) -> dict:
    """Claim the tenant's queued jobs until ``job_id`` is the one claimed (older queued jobs
    of the shared tenant are claimed along the way and left running)."""
    for _ in range(1000):
        r = await client.post("/v1/jobs/claim", headers=headers or tenant.token_auth, json={"project_ids": [tenant.project_id]})
        assert r.status_code == 200, r.text
        if r.json()["job"]["id"] == job_id:
            return r.json()
    raise AssertionError("job never claimed")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- cron: pure functions -------------------------------------------------------------

# --- job schedules over HTTP ----------------------------------------------------------

async def test_schedule_next_run_in_a_non_utc_zone(client, tenant):
    """Compared with an oracle that knows nothing of cron: walk the days in the zone."""
    for tz, cron, hour, minute, weekdays in [
        ("America/New_York", "0 0 9 ? * MON-FRI", 9, 0, range(5)),
        ("Asia/Kolkata", "30 9 * * *", 9, 30, range(7)),
        ("Australia/Adelaide", "0 45 23 ? * 1", 23, 45, [6]),  # Sunday, UTC+9:30/+10:30
    ]:
        before = dt.datetime.now(UTC)
        s = await new_schedule(client, tenant, cron=cron, timezone=tz)
        assert s["timezone"] == tz and s["cron"] == cron and s["enabled"] is True
        zone = ZoneInfo(tz)
        day = before.astimezone(zone).date()
        while True:
            candidate = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
            if candidate > before and candidate.weekday() in weekdays:
                break
            day += dt.timedelta(days=1)
        assert at(s["next_run_at"]) == candidate.astimezone(UTC), (tz, cron)
        r = await client.get(f"/v1/job-schedules/{s['id']}", headers=tenant.token_auth)
        assert r.json()["next_run_at"] == s["next_run_at"]


async def test_schedule_validation_names_the_field(client, tenant):
    cases = [({"cron": "61 * * * *"}, "cron", "out of range"),
             ({"cron": "0 0 12 * * *"}, "cron", "'?'"),
             ({"cron": "0 0 30 2 *"}, "cron", "matches no time"),
             ({"cron": "0 0 0 1 1 ? 2020"}, "cron", "matches no time"),
             ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
             ({"timezone": "../../etc/passwd"}, "timezone", "unknown time zone"),
             ({"target": {"kind": "script", "ref": "x"}}, "target.kind", ""),
             ({"target": {"kind": "command", "ref": ""}}, "target.ref", ""),
             ({"target": {"kind": "workflow", "ref": "w", "args": {"blob": "x" * 20000}}}, "target.args", "bytes")]
    for extra, field, words in cases:
        r = await client.post("/v1/job-schedules", headers=tenant.token_auth, json={
            "project_id": tenant.project_id, "name": "bad", "cron": YEARLY, "target": CMD, **extra})
        assert r.status_code == 422, (extra, r.text)
        assert field in r.json()["detail"] and words in r.json()["detail"], (extra, r.text)
    s = await new_schedule(client, tenant)
    r = await client.patch(f"/v1/job-schedules/{s['id']}", headers=tenant.token_auth, json={"cron": "* * *"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cron"
    r = await client.patch(f"/v1/job-schedules/{s['id']}", headers=tenant.token_auth, json={"timezone": "Nowhere"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "timezone"


async def test_schedule_updates_recompute_next_run(client, tenant):
    s = await new_schedule(client, tenant, cron="0 0 12 ? * 1", timezone="UTC",
                           target={"kind": "workflow", "ref": "wf-1", "args": {"depth": 2}})
    assert s["target"] == {"kind": "workflow", "ref": "wf-1", "args": {"depth": 2}}
    url = f"/v1/job-schedules/{s['id']}"
    r = await client.patch(url, headers=tenant.token_auth, json={"enabled": False})
    assert r.status_code == 200 and r.json()["next_run_at"] is None and r.json()["enabled"] is False
    r = await client.patch(url, headers=tenant.token_auth, json={"enabled": True})
    assert r.json()["next_run_at"] == s["next_run_at"]
    r = await client.patch(url, headers=tenant.token_auth, json={"timezone": "Asia/Tokyo"})
    assert at(r.json()["next_run_at"]).astimezone(ZoneInfo("Asia/Tokyo")).hour == 12
    moved = r.json()["next_run_at"]
    r = await client.patch(url, headers=tenant.token_auth, json={"name": "renamed", "target": CMD})  # does not move the run
    assert r.json()["next_run_at"] == moved and r.json()["name"] == "renamed"
    r = await client.patch(url, headers=tenant.token_auth, json={"cron": "  0 0 6 * *  "})
    local = at(r.json()["next_run_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
    assert r.json()["cron"] == "0 0 6 * *" and (local.day, local.hour, local.minute) == (6, 0, 0)
    r = await client.get(f"/v1/job-schedules?project_id={tenant.project_id}&enabled=true&limit=200", headers=tenant.token_auth)
    assert s["id"] in {i["id"] for i in r.json()["items"]}
    assert all(i["enabled"] for i in r.json()["items"])
    r = await client.post("/v1/job-schedules", headers=tenant.token_auth, json={
        "project_id": tenant.project_id, "name": "renamed", "cron": YEARLY, "target": CMD})
    assert r.status_code == 409  # names are unique within a project


# --- jobs -----------------------------------------------------------------------------

async def test_manual_runs(client, tenant):
    job = await new_job(client, tenant)
    assert job["status"] == "queued" and job["target"] == CMD and job["schedule_id"] is None
    assert job["scheduled_for"] is None and job["started_at"] is None

    s = await new_schedule(client, tenant, target={"kind": "workflow", "ref": "nightly"})
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={"schedule_id": s["id"]})
    assert r.status_code == 201, r.text
    assert r.json()["target"] == {"kind": "workflow", "ref": "nightly", "args": None}
    assert r.json()["project_id"] == tenant.project_id and r.json()["schedule_id"] == s["id"]
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={"schedule_id": s["id"], "target": CMD})
    assert r.status_code == 201 and r.json()["target"] == CMD

    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={"project_id": tenant.project_id})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target"
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={"target": CMD})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_id"
    other = (await client.post("/v1/projects", headers=tenant.token_auth,
                               json={"workspace_id": tenant.workspace_id, "name": "jobs-other"})).json()
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={"schedule_id": s["id"], "project_id": other["id"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_id"
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={**{"project_id": tenant.project_id, "target": CMD},
                                                          "status": "running"})
    assert r.status_code == 422

    r = await client.get(f"/v1/jobs?schedule_id={s['id']}", headers=tenant.token_auth)
    assert len(r.json()["items"]) == 2

    # deleting the schedule keeps its jobs (schedule_id becomes null)
    assert (await client.delete(f"/v1/job-schedules/{s['id']}", headers=tenant.token_auth)).status_code == 204
    r = await client.get(f"/v1/jobs/{r.json()['items'][0]['id']}", headers=tenant.token_auth)
    assert r.status_code == 200 and r.json()["schedule_id"] is None


async def test_job_state_machine_and_timestamps(client, tenant):
    """A PATCH only cancels; running and finishing are the runner protocol's (the whole
    protocol: tests/areas/test_runners.py). Two clients PATCHing a job to running, a success
    without an exit code: both refused."""
    job = await new_job(client, tenant)
    for body in ({"status": "running"}, {"status": "succeeded"}, {"exit_code": 0}):
        r = await client.patch(f"/v1/jobs/{job['id']}", headers=tenant.token_auth, json=body)
        assert r.status_code == 422, (body, r.text)
    claim = await claim_job(client, tenant, job["id"])
    running = claim["job"]
    assert running["status"] == "running" and running["started_at"] is not None and running["finished_at"] is None
    r = await client.post(f"/v1/jobs/{job['id']}/finish", headers=tenant.token_auth,
                          json={"claim_secret": claim["claim_secret"], "exit_code": 3})
    assert r.status_code == 200, r.text
    failed = r.json()
    assert (failed["status"], failed["exit_code"], failed["started_at"]) == ("failed", 3, running["started_at"])
    assert at(failed["finished_at"]) >= at(failed["started_at"])
    r = await move(client, tenant, "/v1/jobs", job["id"], "cancelled")
    assert r.status_code == 409 and r.json()["detail"] == "cannot move job from failed to cancelled"

    cancelled = await new_job(client, tenant)
    r = (await move(client, tenant, "/v1/jobs", cancelled["id"], "cancelled")).json()
    assert r["status"] == "cancelled" and r["started_at"] is None and r["finished_at"] is not None
    assert (await move(client, tenant, "/v1/jobs", cancelled["id"], "cancelled")).status_code == 200  # staying put


# --- logs -----------------------------------------------------------------------------

async def test_log_tailing_with_concurrent_appends(client, concurrent_client, tenant, admin_conn):
    job = await new_job(client, tenant)
    url = f"/v1/jobs/{job['id']}/logs"
    r = await client.get(url, headers=tenant.token_auth)
    assert r.status_code == 200 and r.json() == {"items": [], "next_after": 0, "job_status": "queued"}
    secret = (await claim_job(client, tenant, job["id"]))["claim_secret"]

    # 40 appends at once (really concurrent: the app runs in this event loop)
    texts = [f"line {i}\n" for i in range(40)]
    results = await asyncio.gather(*(concurrent_client.post(url, headers=tenant.token_auth, json={"claim_secret": secret, "data": x})
                                     for x in texts))
    assert all(r.status_code == 201 for r in results), [r.text for r in results if r.status_code != 201]
    seq_of = {r.json()["data"]: r.json()["seq"] for r in results}
    assert sorted(seq_of.values()) == list(range(1, 41))  # gapless, no duplicates

    # tail it 7 at a time: every chunk once, in seq order
    seen, after = [], 0
    while True:
        r = await client.get(f"{url}?after={after}&limit=7", headers=tenant.token_auth)
        page = r.json()
        assert len(page["items"]) <= 7
        if not page["items"]:
            assert page["next_after"] == after
            break
        seen += page["items"]
        after = page["next_after"]
        assert after == page["items"][-1]["seq"]
    assert [c["seq"] for c in seen] == list(range(1, 41))
    assert {c["data"]: c["seq"] for c in seen} == seq_of

    # appending while tailing: the reader picks up exactly the new chunks
    r = await client.post(url, headers=tenant.token_auth, json={"claim_secret": secret, "data": "tail"})
    assert r.json()["seq"] == 41 and r.json()["attempt"] == 1
    r = await client.get(f"{url}?after={after}", headers=tenant.token_auth)
    assert [(c["seq"], c["data"]) for c in r.json()["items"]] == [(41, "tail")]

    # the job's own audit trail is not flooded by appends (log_seq is noise): its one
    # UPDATE is the claim ...
    updates = await admin_conn.fetchval(
        "select count(*) from token_audit_log where table_name = 'job' and row_id = $1 and action = 'UPDATE'",
        uuid.UUID(job["id"]))
    assert updates == 1
    # ... each chunk is audited as its own insert, attributed, without the text
    rows = await admin_conn.fetch(
        "select token_id::text, changes from token_audit_log where table_name = 'job_log' and action = 'INSERT'"
        " and (changes ->> 'job_id')::uuid = $1", uuid.UUID(job["id"]))
    assert len(rows) == 41 and {r["token_id"] for r in rows} == {tenant.token_id}
    assert all("data" not in json.loads(r["changes"]) for r in rows)
    assert sorted(json.loads(r["changes"])["seq"] for r in rows) == list(range(1, 42))


async def test_log_limits(client, tenant):
    job = await new_job(client, tenant)
    url = f"/v1/jobs/{job['id']}/logs"
    secret = (await claim_job(client, tenant, job["id"]))["claim_secret"]
    r = await client.post(url, headers=tenant.token_auth, json={"claim_secret": secret, "data": "é" * 32769})  # 65538 bytes
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "data"
    r = await client.post(url, headers=tenant.token_auth, json={"claim_secret": secret, "data": "x" * 65536})
    assert r.status_code == 201
    r = await client.post(url, headers=tenant.token_auth, json={"claim_secret": secret, "data": ""})
    assert r.status_code == 422
    r = await client.post(url, headers=tenant.token_auth, json={"claim_secret": secret, "data": "x", "seq": 7})
    assert r.status_code == 422
    r = await client.post(url, headers=tenant.token_auth, json={"data": "x"})
    assert r.status_code == 422 and "claim_secret" in r.json()["detail"]
    r = await client.get(f"{url}?after=-1", headers=tenant.token_auth)
    assert r.status_code == 422
    r = await client.get(f"{url}?limit=0", headers=tenant.token_auth)
    assert r.status_code == 422
    await move(client, tenant, "/v1/jobs", job["id"], "cancelled")
    r = await client.get(f"{url}?after=1", headers=tenant.token_auth)
    assert r.json() == {"items": [], "next_after": 1, "job_status": "cancelled"}
    # deleting the job deletes its log
    assert (await client.delete(f"/v1/jobs/{job['id']}", headers=tenant.token_auth)).status_code == 204
    assert (await client.get(url, headers=tenant.token_auth)).status_code == 404


# --- isolation, scopes, audit -----------------------------------------------------------

async def test_other_organization_is_404_everywhere(client, tenant, stranger):
    s = await new_schedule(client, tenant)
    job = await new_job(client, tenant, schedule_id=s["id"])
    secret = (await claim_job(client, tenant, job["id"]))["claim_secret"]
    await client.post(f"/v1/jobs/{job['id']}/logs", headers=tenant.token_auth, json={"claim_secret": secret, "data": "secret output"})
    for url in (f"/v1/job-schedules/{s['id']}", f"/v1/jobs/{job['id']}"):
        assert (await client.get(url, headers=stranger.token_auth)).status_code == 404
        r = await client.patch(url, headers=stranger.token_auth, json={"enabled": False} if "schedules" in url
                               else {"status": "cancelled"})
        assert r.status_code == 404, r.text
        assert (await client.delete(url, headers=stranger.token_auth)).status_code == 404
    logs = f"/v1/jobs/{job['id']}/logs"
    r = await client.get(logs, headers=stranger.token_auth)
    assert r.status_code == 404 and "secret" not in r.text
    assert (await client.post(logs, headers=stranger.token_auth, json={"claim_secret": secret, "data": "injected"})
            ).status_code == 404
    for action in ("heartbeat", "finish"):
        r = await client.post(f"/v1/jobs/{job['id']}/{action}", headers=stranger.token_auth,
                              json={"claim_secret": secret, "exit_code": 0} if action == "finish"
                              else {"claim_secret": secret})
        assert r.status_code == 404, r.text
    r = await client.get(logs, headers=tenant.token_auth)
    assert [c["data"] for c in r.json()["items"]] == ["secret output"]
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=tenant.token_auth)).json()["status"] == "running"
    assert (await client.get(f"/v1/job-schedules/{s['id']}", headers=tenant.token_auth)).json()["enabled"] is True
    for path in ("/v1/jobs", "/v1/job-schedules"):
        items = (await client.get(f"{path}?limit=200", headers=stranger.token_auth)).json()["items"]
        assert not {i["id"] for i in items} & {s["id"], job["id"]}
    # body references into another organization: 422 naming the field
    r = await client.post("/v1/jobs", headers=stranger.token_auth, json={"schedule_id": s["id"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "schedule_id"
    r = await client.post("/v1/job-schedules", headers=stranger.token_auth, json={
        "project_id": tenant.project_id, "name": "x", "cron": YEARLY, "target": CMD})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_id"


async def test_scopes(client, tenant):
    job = await new_job(client, tenant)
    none = bearer((await make_token(client, tenant, ["agents:write"]))["token"])
    read = bearer((await make_token(client, tenant, ["tasks:read"]))["token"])
    logs = f"/v1/jobs/{job['id']}/logs"
    for url in ("/v1/jobs", "/v1/job-schedules", logs):
        r = await client.get(url, headers=none)
        assert r.status_code == 403 and r.json()["missing_scope"] == "tasks:read" and "tasks:read" in r.json()["detail"]
        assert (await client.get(url, headers=read)).status_code == 200
    for url, body in (("/v1/jobs", {"project_id": tenant.project_id, "target": CMD}),
                      ("/v1/job-schedules", {"project_id": tenant.project_id, "name": "n", "cron": YEARLY, "target": CMD}),
                      (logs, {"data": "x"})):
        r = await client.post(url, headers=read, json=body)
        assert r.status_code == 403 and r.json()["missing_scope"] == "tasks:write", url
    r = await client.patch(f"/v1/jobs/{job['id']}", headers=read, json={"status": "cancelled"})
    assert r.status_code == 403 and r.json()["missing_scope"] == "tasks:write"


async def test_schedule_audit_rows(client, tenant, admin_conn):
    s = await new_schedule(client, tenant)
    await client.patch(f"/v1/job-schedules/{s['id']}", headers=tenant.token_auth, json={"cron": "0 0 2 1 *"})
    rows = await admin_conn.fetch(
        "select action, token_id::text, changes from token_audit_log where table_name = 'job_schedule'"
        " and row_id = $1 order by id", uuid.UUID(s["id"]))
    assert [(r["action"], r["token_id"]) for r in rows] == [("INSERT", tenant.token_id), ("UPDATE", tenant.token_id)]
    assert json.loads(rows[1]["changes"]) == {"cron": {"old": YEARLY, "new": "0 0 2 1 *"}}
