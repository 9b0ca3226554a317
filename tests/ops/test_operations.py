"""What operators watch and rely on: /metrics, the JSON access log, retention.

(The real server's shutdown, logs and packaging: tests/ops/test_serve.py.)"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import uuid

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import create_async_engine

from tenant_api.app import create_app
from tenant_api.ops.logs import JsonFormatter
from tenant_api.ops.retention import purge_round
from tenant_api.settings import RetentionSettings
from tests.support.tenants import bearer, signup
from tests.support.rows import insert_connection, make_vm

U = uuid.UUID
PROBLEM = "application/problem+json"


# --- metrics -----------------------------------------------------------------------------


async def test_metrics_need_the_operators_token_and_show_the_series(client, settings):
    t = await signup(client)
    app = create_app(settings.with_observability(metrics_token="metrics-secret-token"))
    async with AsyncTestClient(app) as c:
        assert (await c.get("/v1/me", headers=t.token_auth)).status_code == 200
        assert (await c.get(f"/v1/agents/{uuid.uuid4()}", headers=t.token_auth)).status_code == 404
        assert (await c.get("/nowhere")).status_code == 404
        r = await c.get("/metrics")
        assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
        assert (await c.get("/metrics", headers=bearer(t.token))).status_code == 401  # a tenant's token is not it
        r = await c.get("/metrics", headers=bearer("metrics-secret-token"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
    for series in (
        'tenant_api_http_requests_total{method="GET",route="/v1/me",status="200"}',
        'tenant_api_http_requests_total{method="GET",route="/v1/agents/{item_id}",status="404"}',
        'tenant_api_http_requests_total{method="GET",route="unmatched",status="404"}',
        'tenant_api_http_request_duration_seconds_bucket{le="0.1",method="GET",route="/v1/me"}',
        'tenant_api_db_pool_connections{state="in_use"}',
        'tenant_api_db_pool_connections{state="waiting"}',
        "tenant_api_usage_records_written_total",
        "tenant_api_usage_records_dropped_total",
        "tenant_api_scheduler_fires_total",
        "tenant_api_scheduler_lateness_seconds_bucket",
        "tenant_api_mails_total",
        "tenant_api_sse_streams_open",
        "tenant_api_robot_sockets_open",
        "tenant_api_rate_limited_total",
        "tenant_api_retention_purged_total",
        "tenant_api_webhook_deliveries_total",
        "tenant_api_webhook_delivery_duration_seconds",
    ):
        assert series in text, series
    # no path of a particular row, no query string: route templates only
    assert not re.search(r'route="[^"]*[0-9a-f]{8}-[0-9a-f]{4}', text)


async def test_metrics_are_not_served_without_a_token(client):
    r = await client.get("/metrics", headers=bearer("anything"))
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)


# --- the access log ------------------------------------------------------------------------


async def test_access_log_lines_are_json_with_request_ids_and_no_secret(client, settings):
    t = await signup(client)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tenant_api")
    logger.addHandler(handler)
    # The level a process's logging configuration gives it (tenant_api.ops.logs): the app
    # leaves logging to the process.
    level, _ = logger.level, logger.setLevel(logging.INFO)
    secret_query = "tapi_notreallyasecretbutlooksone123456"
    try:
        app = create_app(settings)
        async with AsyncTestClient(app) as c:
            responses = [
                await c.get("/v1/me", headers=t.token_auth),
                await c.get("/v1/agents", headers=t.token_auth, params={"cursor": secret_query}),
                await c.get("/v1/agents", headers=bearer("tapi_" + "x" * 38)),  # malformed: 401
                await c.get("/v1/agents", headers=bearer(t.session)),
                await c.post("/v1/auth/login", json={"email": t.email, "password": t.password}),
                await c.get("/v1/not-here"),
            ]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "tenant_api.access"]
    by_id = {line["request_id"]: line for line in access}
    for r in responses:
        # exactly one id, whoever answered: the handler, the edge (401), routing (404)
        assert len(r.headers.get_list("x-request-id")) == 1, r.headers
        line = by_id[r.headers["x-request-id"]]
        assert line["status"] == r.status_code and line["level"] == "INFO"
        assert set(line) >= {"ts", "msg", "method", "route", "status", "request_id"}
    me = by_id[responses[0].headers["x-request-id"]]
    assert me["route"] == "/v1/me" and me["credential"] == t.token[:11] and me["organization_id"] == t.organization_id
    assert me["duration_ms"] >= 0
    assert by_id[responses[1].headers["x-request-id"]]["route"] == "/v1/agents"
    assert by_id[responses[3].headers["x-request-id"]]["credential"] == "session"
    assert by_id[responses[5].headers["x-request-id"]]["route"] == "unmatched"
    text = out.getvalue()
    for secret in (t.token, t.session, t.password, secret_query, responses[4].json()["access_token"]):
        assert secret not in text


# --- retention -----------------------------------------------------------------------------


async def test_retention_purges_what_is_old_and_finished_only(client, admin_conn, settings):
    t = await signup(client)
    org = U(t.organization_id)

    async def job(status_sql: str, finished_ago: str | None) -> U:
        r = await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "schedule_id": None,
                                                             "target": {"kind": "command", "ref": "echo"}})
        assert r.status_code == 201, r.text
        job_id = U(r.json()["id"])
        # a runner claims it and writes a log line (the claim's secret proves the writer)
        claim = await client.post("/v1/jobs/claim", headers=t.token_auth, json={"project_ids": [t.project_id]})
        assert claim.status_code == 200 and claim.json()["job"]["id"] == str(job_id), claim.text
        r = await client.post(f"/v1/jobs/{job_id}/logs", headers=t.token_auth,
                              json={"claim_secret": claim.json()["claim_secret"], "data": "line\n"})
        assert r.status_code == 201, r.text
        if status_sql != "running":
            outcome = {"exit_code": 0} if status_sql == "succeeded" else {"exit_code": 1, "error": "failed"}
            r = await client.post(f"/v1/jobs/{job_id}/finish", headers=t.token_auth,
                                  json={"claim_secret": claim.json()["claim_secret"], **outcome})
            assert r.status_code == 200 and r.json()["status"] == status_sql, r.text
        if finished_ago:
            await admin_conn.execute("update job set finished_at = now() - $2::text::interval where id = $1",
                                     job_id, finished_ago)
        return job_id

    old_done, old_failed, young_done, running = (
        await job("succeeded", "100 days"), await job("failed", "91 days"), await job("succeeded", "2 hours"),
        await job("running", None))
    # each job has its runner's log line (a finished job's log is closed: app.guard_job_log)
    assert await admin_conn.fetchval("select count(*) from job_log where job_id = any($1::uuid[])",
                                     [old_done, old_failed]) == 2

    vm = await make_vm(client, t)
    old_conn = await insert_connection(admin_conn, t, vm, instance="gone")
    young_conn = await insert_connection(admin_conn, t, vm, instance="gone")
    open_conn = await insert_connection(admin_conn, t, vm, instance="alive")
    await admin_conn.execute("update desktop_connection set status = 'disconnected', close_reason = 'stale',"
                             " disconnected_at = now() - $2::text::interval where id = $1", old_conn, "40 days")
    await admin_conn.execute("update desktop_connection set status = 'disconnected', close_reason = 'stale',"
                             " disconnected_at = now() - $2::text::interval where id = $1", young_conn, "3 days")

    invitee = f"ret{uuid.uuid4().hex[:8]}@example.com"
    r = await client.post(f"/v1/projects/{t.project_id}/invites", headers=t.token_auth, json={"email": invitee, "role": "viewer"})
    assert r.status_code == 201, r.text
    invite = U(r.json()["id"])
    await admin_conn.execute("update invite_outbox set status = 'sent', sent_at = now() - interval '45 days'"
                             " where invite_id = $1", invite)

    events = [await admin_conn.fetchval(
        "insert into unattributed_security_event (occurred_at, last_occurred_at, minute, reason, method, route, status)"
        " select at, at, date_trunc('minute', at, 'UTC'), 'unknown', 'GET', '/v1/me', 401"
        " from (select now() - $1::text::interval as at) t returning id", ago)
        for ago in ("200 days", "100 days", "10 days")]

    # As the scheduler does it: the API role, no context, batches of 1 (bounded loops).
    engine = create_async_engine(settings.database.worker_url)  # the scheduler process's login
    try:
        removed = await purge_round(engine, RetentionSettings(jobs_days=90, desktop_connections_days=30,
                                                              invite_mails_days=30, security_events_days=90,
                                                              batch_size=1))
    finally:
        await engine.dispose()
    assert removed["jobs"] >= 2 and removed["desktop_connections"] >= 1 and removed["invite_mails"] >= 1
    assert removed["security_events"] >= 2

    jobs = {r["id"] for r in await admin_conn.fetch("select id from job where organization_id = $1", org)}
    assert old_done not in jobs and old_failed not in jobs and {young_done, running} <= jobs
    assert not await admin_conn.fetchval("select count(*) from job_log where job_id = any($1::uuid[])",
                                         [old_done, old_failed])
    assert await admin_conn.fetchval("select count(*) from job_log where job_id = $1", young_done) == 1
    conns = {r["id"] for r in await admin_conn.fetch("select id from desktop_connection where organization_id = $1",
                                                     org)}
    assert old_conn not in conns and {young_conn, open_conn} <= conns
    assert not await admin_conn.fetchval("select count(*) from invite_outbox where invite_id = $1", invite)
    r = await client.get(f"/v1/projects/{t.project_id}/invites/{invite}", headers=t.token_auth)
    assert r.status_code == 200 and r.json()["delivery_status"] is None  # the invite stays
    left = {r["id"] for r in await admin_conn.fetch(
        "select id from unattributed_security_event where id = any($1::uuid[])", events)}
    assert left == {events[2]}

    # audited in the organization, as retention, with no token
    audit = await admin_conn.fetch("select table_name, token_id, request_id from token_audit_log"
                                   " where organization_id = $1 and action = 'DELETE' and row_id = any($2::uuid[])",
                                   org, [old_done, old_failed, old_conn])
    assert {(a["table_name"], a["request_id"]) for a in audit} == {("job", "retention"),
                                                                   ("desktop_connection", "retention")}
    assert all(a["token_id"] is None for a in audit)


async def test_retention_functions_refuse_to_purge_anything_young(client, admin_conn, api_conn, worker_conn):
    t = await signup(client)
    r = await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "schedule_id": None,
                                                         "target": {"kind": "command", "ref": "echo"}})
    job = U(r.json()["id"])
    assert (await client.patch(f"/v1/jobs/{job}", headers=t.token_auth, json={"status": "cancelled"})).status_code == 200
    await admin_conn.execute("update job set finished_at = now() - interval '20 hours' where id = $1", job)
    # whatever cutoff the caller gives, a row finished less than a day ago stays
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    assert await worker_conn.fetchval("select auth.purge_finished_jobs($1, 10000)", future) >= 0
    assert await admin_conn.fetchval("select count(*) from job where id = $1", job) == 1
    # and the API role deletes nothing directly without its context
    assert await api_conn.execute("delete from job where id = $1", job) == "DELETE 0"




async def test_one_purge_batch_spans_organizations_each_in_its_own_context(client, admin_conn, worker_conn):
    """auth.purge_in_context deletes a batch organization by organization: each deletion
    is audited in its own organization, as retention; and no login may call the helper
    itself (its table and condition come from the purge functions only)."""
    jobs: dict[U, U] = {}
    for _ in range(2):
        t = await signup(client)
        r = await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "schedule_id": None,
                                                             "target": {"kind": "command", "ref": "echo"}})
        job = U(r.json()["id"])
        assert (await client.patch(f"/v1/jobs/{job}", headers=t.token_auth,
                                   json={"status": "cancelled"})).status_code == 200
        await admin_conn.execute("update job set finished_at = now() - interval '400 days' where id = $1", job)
        jobs[U(t.organization_id)] = job
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=300)
    assert await worker_conn.fetchval("select auth.purge_finished_jobs($1, 10000)", cutoff) >= 2
    assert not await admin_conn.fetchval("select count(*) from job where id = any($1::uuid[])", list(jobs.values()))
    for org, job in jobs.items():
        audit = await admin_conn.fetch("select organization_id, request_id, token_id from token_audit_log"
                                       " where row_id = $1 and action = 'DELETE'", job)
        assert [(a["organization_id"], a["request_id"], a["token_id"]) for a in audit] == [(org, "retention", None)]
    for role in ("tenant_api", "tenant_worker", "tenant_api_jobs", "tenant_login"):
        assert not await admin_conn.fetchval(
            "select has_function_privilege($1, 'auth.purge_in_context(regclass, text, text, timestamptz, integer)',"
            " 'EXECUTE')", role), role
