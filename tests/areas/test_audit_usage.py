"""Usage records, security events and the auditor's API (events, usage, export)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid

import asyncpg
import jwt
import pytest
from litestar.testing import AsyncTestClient

from tenant_api.app import create_app
from tenant_api.audit import controller as audit_controller
from tenant_api.auth.credentials import SessionCodec, new_api_token
from tenant_api.scopes import ROLE_SCOPES
from tests.support.database import connect
from tests.support.statements import request_statements
from tests.support.tenants import bearer, make_token, signup
from tests.support.usage import flush


async def usage_rows(admin_conn: asyncpg.Connection, token_id: str) -> list[asyncpg.Record]:
    return await admin_conn.fetch("select * from token_usage where token_id = $1 order by occurred_at",
                                  uuid.UUID(token_id))


async def all_events(client: AsyncTestClient, headers: dict[str, str], **params: str) -> list[dict]:
    items, cursor = [], None
    while True:
        q = {**params, "limit": "2", **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/audit/events", headers=headers, params=q)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_every_authenticated_request_leaves_a_usage_record(client, admin_conn):
    t = await signup(client)
    reader = await make_token(client, t, ["agents:read"])
    h = {**bearer(reader["token"]), "User-Agent": "audit-test/1.0"}
    ok = await client.get("/v1/agents", headers=h)
    refused = await client.post("/v1/agents", headers=h, json={"project_id": t.project_id, "name": "x"})
    missing = await client.get(f"/v1/agents/{uuid.uuid4()}", headers=h)
    assert (ok.status_code, refused.status_code, missing.status_code) == (200, 403, 404)
    created = await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "u1"})
    assert created.status_code == 201
    await flush(client)

    rows = await usage_rows(admin_conn, reader["id"])
    assert [(r["method"], r["route"], r["status"]) for r in rows] == [
        ("GET", "/v1/agents", 200),
        ("POST", "/v1/agents", 403),
        ("GET", "/v1/agents/{item_id}", 404),  # the template, never the raw id
    ]
    for r, resp in zip(rows, (ok, refused, missing)):
        assert str(r["organization_id"]) == t.organization_id and str(r["user_id"]) == t.user_id
        assert r["request_id"] == resp.headers["x-request-id"]
        assert r["user_agent"] == "audit-test/1.0" and r["prefix"] == reader["prefix"]
        assert r["reason"] is None and r["duration_ms"] > 0
    # The write's usage record and the trigger's audit row share the request id.
    (write,) = await usage_rows(admin_conn, t.token_id)
    audit = await admin_conn.fetch("select table_name, action from token_audit_log where request_id = $1",
                                   write["request_id"])
    assert write["status"] == 201 and [tuple(a) for a in audit] == [("agent", "INSERT")]
    # last_used_at is kept current by auth.begin_request.
    used = await admin_conn.fetchval("select last_used_at from platform_token where id = $1",
                                     uuid.UUID(reader["id"]))
    assert used is not None and used > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)


async def test_refused_credentials_are_security_events_with_the_prefix_only(client, admin_conn, api_conn):
    t = await signup(client)
    revoked = await make_token(client, t, ["agents:read"])
    assert (await client.delete(f"/v1/tokens/{revoked['id']}", headers=t.session_auth)).status_code == 204
    expired = await make_token(client, t, ["agents:read"])
    await admin_conn.execute("update platform_token set expires_at = now() - interval '1 minute' where id = $1",
                             uuid.UUID(expired["id"]))
    unknown = new_api_token()
    malformed = "tapi_" + uuid.uuid4().hex[:6] + "A" * 32  # a prefix no other test sends
    # A session JWT of ours that has expired names its organization (signature checked);
    # one signed with another key names nothing.
    session_id = uuid.UUID(jwt.decode(t.session, options={"verify_signature": False})["sid"])
    stale = client.app.state.codec.issue(session_id=session_id, organization_id=uuid.UUID(t.organization_id),
                                         user_id=uuid.UUID(t.user_id),
                                         expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    forged = SessionCodec("another-key-" + "x" * 40, "tenant-api").issue(
        session_id=session_id, organization_id=uuid.UUID(t.organization_id), user_id=uuid.UUID(t.user_id),
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    for secret in (revoked["token"], expired["token"], unknown, malformed, stale, forged):
        r = await client.get("/v1/agents", headers={**bearer(secret), "User-Agent": f"ua-{secret[-8:]}"})
        assert r.status_code == 401, r.text
    await flush(client)
    (row,) = [r for r in await usage_rows(admin_conn, str(session_id)) if r["reason"]]
    assert (row["reason"], row["prefix"], str(row["user_id"])) == ("expired", "session", t.user_id)
    assert await admin_conn.fetchval("select reason from unattributed_security_event where user_agent = $1",
                                     f"ua-{forged[-8:]}") == "malformed"

    for tok, reason in ((revoked, "revoked"), (expired, "expired")):
        (row,) = await usage_rows(admin_conn, tok["id"])
        assert (row["reason"], row["status"], row["prefix"], str(row["organization_id"])) == (
            reason, 401, tok["prefix"], t.organization_id)
    loose = await admin_conn.fetch(
        "select reason, prefix from unattributed_security_event where prefix = any($1::text[])",
        [unknown[:11], malformed[:11]])
    assert sorted(tuple(r) for r in loose) == sorted([("unknown", unknown[:11]), ("malformed", malformed[:11])])
    # No secret anywhere in the trail, only prefixes.
    for secret in (revoked["token"], expired["token"], unknown, malformed, stale, forged):
        body = secret[11:]
        for table in ("token_usage", "unattributed_security_event", "token_audit_log"):
            hits = await admin_conn.fetchval(
                f"select count(*) from {table} x where strpos(to_jsonb(x)::text, $1) > 0", body)
            assert hits == 0, (table, secret[:11])
    # Auditors see their organization's refusals in the timeline; nobody sees the
    # unattributed ones through the API role.
    events = await all_events(client, t.token_auth, kind="security")
    assert {(e["token_id"], e["reason"], e["status"]) for e in events} == {
        (revoked["id"], "revoked", 401), (expired["id"], "expired", 401), (str(session_id), "expired", 401)}
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch("select * from unattributed_security_event")


async def test_events_filters_and_token_activity(client, admin_conn):
    t = await signup(client)
    reader = await make_token(client, t, ["agents:read"])
    a = (await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "f1"})).json()
    await client.patch(f"/v1/agents/{a['id']}", headers=t.token_auth, json={"name": "f2"})
    await client.get("/v1/agents", headers=bearer(reader["token"]))
    await client.delete(f"/v1/agents/{a['id']}", headers=bearer(reader["token"]))  # 403
    await flush(client)

    activity = await all_events(client, t.token_auth, token_id=reader["id"])
    assert [(e["kind"], e["method"], e["route"], e["status"]) for e in activity] == [
        ("request", "GET", "/v1/agents", 200), ("request", "DELETE", "/v1/agents/{item_id}", 403)]
    refused = await all_events(client, t.token_auth, token_id=reader["id"], status="4xx")
    assert [e["status"] for e in refused] == [403]
    changes = await all_events(client, t.token_auth, table="agent")
    assert [e["action"] for e in changes] == ["INSERT", "UPDATE"]
    assert all(e["kind"] == "change" and e["token_id"] == t.token_id for e in changes)
    assert [e["action"] for e in await all_events(client, t.token_auth, table="agent", action="UPDATE")] == ["UPDATE"]
    assert await all_events(client, t.token_auth, user_id=str(uuid.uuid4())) == []
    by_request = await all_events(client, t.token_auth, request_id=changes[0]["request_id"])
    assert {e["kind"] for e in by_request} == {"change", "request"}
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert await all_events(client, t.token_auth, since=future) == []
    assert len(await all_events(client, t.token_auth, until=future, table="agent")) == 2
    # Another organization's auditor sees none of it.
    other = await signup(client)
    assert await all_events(client, other.token_auth, token_id=reader["id"]) == []
    r = await client.get("/v1/audit/events", headers=t.token_auth, params={"cursor": "not-a-cursor"})
    assert r.status_code == 422
    # Without audit:read: 403 naming it, on every audit route and the export.
    for path, accept in (("/v1/audit/events", "application/json"), ("/v1/audit/events", "text/csv"),
                         ("/v1/audit/usage", "application/json"), ("/v1/audit/verify", "application/json")):
        r = await client.get(path, headers={**bearer(reader["token"]), "Accept": accept})
        assert r.status_code == 403 and r.json()["missing_scope"] == "audit:read", (path, r.text)


async def test_pagination_is_stable_while_events_commit_late(client, admin_conn, database):
    """A transaction that wrote an event earlier but commits later must not land behind
    a page already served (UUIDv7 order alone would skip it)."""
    t = await signup(client)
    (await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "p0"}))
    slow = await connect(database.admin_url)
    try:
        tx = slow.transaction()
        await tx.start()
        late_id = await slow.fetchval(
            "insert into token_audit_log (organization_id, table_name, action, changes)"
            " values ($1, 'agent', 'UPDATE', '{}') returning id", uuid.UUID(t.organization_id))
        for i in range(3):  # committed after the late one was written
            await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": f"p{i + 1}"})
        seen: list[str] = []
        r = await client.get("/v1/audit/events", headers=t.token_auth, params={"table": "agent", "limit": "1"})
        page = r.json()
        seen += [e["id"] for e in page["items"]]
        # Everything written after the open transaction began is withheld until it ends:
        # nothing committed later can fall behind this cursor.
        assert len(seen) == 1 and page["next_cursor"] is None
        cursor = page["resume_cursor"]
        r = await client.get("/v1/audit/events", headers=t.token_auth, params={"table": "agent", "cursor": cursor})
        assert r.json()["items"] == [] and r.json()["resume_cursor"] == cursor
        await tx.commit()
    finally:
        await slow.close()
    r = await client.get("/v1/audit/events", headers=t.token_auth, params={"table": "agent", "limit": "10", "cursor": cursor})
    seen += [e["id"] for e in r.json()["items"]]
    ids = await admin_conn.fetch("select id::text from token_audit_log where organization_id = $1"
                                 " and table_name = 'agent'", uuid.UUID(t.organization_id))
    assert sorted(seen) == sorted(r["id"] for r in ids) and str(late_id) in seen and len(seen) == 5


async def test_usage_buckets(client, jobs_conn):
    t = await signup(client)
    reader = await make_token(client, t, ["agents:read"])
    day = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    base = {"organization_id": t.organization_id, "token_id": reader["id"], "user_id": t.user_id,
            "prefix": reader["prefix"], "method": "GET", "route": "/v1/agents", "duration_ms": 1.5,
            "user_agent": "x", "request_id": None, "reason": None}
    rows = [
        {**base, "occurred_at": (day + dt.timedelta(hours=1)).timestamp(), "status": 200, "client_ip": "10.0.0.1"},
        {**base, "occurred_at": (day + dt.timedelta(hours=1, minutes=5)).timestamp(), "status": 403,
         "client_ip": "10.0.0.2"},
        {**base, "occurred_at": (day + dt.timedelta(hours=2)).timestamp(), "status": 500, "client_ip": "10.0.0.1"},
        {**base, "occurred_at": (day + dt.timedelta(days=1)).timestamp(), "status": 401, "client_ip": "10.0.0.3",
         "reason": "revoked"},
        {**base, "occurred_at": (day + dt.timedelta(days=1, hours=3)).timestamp(), "status": 404,
         "client_ip": "10.0.0.3"},
    ]
    # The usage recorder's own path: app.record_usage, as the API process's background login.
    assert await jobs_conn.fetchval("select app.record_usage($1::json)", json.dumps(rows)) == 5

    params = {"since": day.isoformat(), "until": (day + dt.timedelta(days=2)).isoformat(), "bucket": "day",
              "token_id": reader["id"]}
    r = await client.get("/v1/audit/usage", headers=t.token_auth, params=params)
    assert r.status_code == 200, r.text
    got = [(i["bucket"][:10], i["requests"], i["errors"], i["refused"], i["distinct_ips"]) for i in r.json()["items"]]
    assert got == [("2026-03-10", 3, 1, 1, 2), ("2026-03-11", 2, 1, 1, 1)]
    assert r.json()["items"][1]["last_seen"].startswith("2026-03-11T03:00")
    r = await client.get("/v1/audit/usage", headers=t.token_auth, params={**params, "bucket": "hour"})
    assert [(i["bucket"][11:13], i["requests"]) for i in r.json()["items"]] == [
        ("01", 2), ("02", 1), ("00", 1), ("03", 1)]
    # Without token_id: every token of the organization, including today's real traffic.
    await client.get("/v1/agents", headers=bearer(reader["token"]))
    await flush(client)
    r = await client.get("/v1/audit/usage", headers=t.token_auth)
    assert any(i["token_id"] == reader["id"] and i["requests"] >= 1 for i in r.json()["items"])
    r = await client.get("/v1/audit/usage", headers=t.token_auth, params={**params, "bucket": "hour",
                                                                  "since": "2025-01-01T00:00:00Z"})
    assert r.status_code == 422


async def test_export_csv_and_ndjson_stream_every_matching_event(client, monkeypatch):
    monkeypatch.setattr(audit_controller, "EXPORT_BATCH", 3)  # several batches, one transaction each
    t = await signup(client)
    for i in range(4):
        await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": f"=cmd|{i}"})
    await client.get("/v1/agents", headers={**t.token_auth, "User-Agent": "=HYPERLINK(1)"})
    await flush(client)
    listed = await all_events(client, t.token_auth)

    r = await client.get("/v1/audit/events", headers={**t.token_auth, "Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["id"] for row in table] == [e["id"] for e in listed] and len(table) >= 8
    change = next(row for row in table if row["table_name"] == "agent")
    assert json.loads(change["changes"])["name"].startswith("=cmd")  # JSON cell: starts with {
    request = next(row for row in table if row["method"] == "GET" and row["route"] == "/v1/agents")
    assert request["user_agent"] == "'=HYPERLINK(1)"  # defused for spreadsheets

    r = await client.get("/v1/audit/events", headers={**t.token_auth, "Accept": "application/x-ndjson"},
                         params={"kind": "change", "table": "agent"})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [e["id"] for e in lines] == [e["id"] for e in listed if e["table_name"] == "agent"]
    assert len(lines) == 4 and all(e["kind"] == "change" and e["action"] == "INSERT" for e in lines)


async def test_auditor_reads_everything_and_changes_nothing(client, admin_conn, api_conn):
    t = await signup(client)
    audit_only = await make_token(client, t, ["audit:read"])
    # An auditor member of the organization (role auditor), with a session.
    other = await signup(client)
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role)"
                             " values ($1, $2, 'auditor')", uuid.UUID(t.organization_id), uuid.UUID(other.user_id))
    r = await client.post("/v1/auth/login", json={"email": other.email, "password": other.password,
                                                  "organization_id": t.organization_id})
    assert r.status_code == 200, r.text
    auditor_session = r.json()["access_token"]
    agent = (await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "ro"})).json()
    await flush(client)

    for h in (bearer(audit_only["token"]), bearer(auditor_session)):
        for path in ("/v1/audit/events", "/v1/audit/usage", "/v1/audit/verify"):
            r = await client.get(path, headers=h)
            assert r.status_code == 200, (path, r.text)
        assert any(e["row_id"] == agent["id"] for e in await all_events(client, h, table="agent"))
        r = await client.get("/v1/audit/events", headers={**h, "Accept": "text/csv"})
        assert r.status_code == 200 and agent["id"] in r.text

    # Every write route of the API refuses both with 403 (logout, which ends the caller's
    # own session, is open to any credential). An auditor holds one write scope,
    # tokens:write, for tokens of their own within their read scopes (tests/api/test_journeys.py
    # covers it); besides /v1/tokens, nothing.
    assert [s for s in ROLE_SCOPES["auditor"] if not s.endswith(":read")] == ["tokens:write"]
    writes = []
    for route in client.app.routes:
        for handler in getattr(route, "route_handlers", []):
            opt = handler.opt or {}
            if opt.get("public") or not str(opt.get("scope")).endswith(":write") or opt["scope"] == "tokens:write":
                continue
            for method in handler.http_methods - {"GET", "HEAD", "OPTIONS"}:
                path = route.path_format.format(**{p: uuid.uuid4() for p in route.path_parameters})
                writes.append((method, path, opt["scope"]))
    assert len(writes) >= 8
    for h in (bearer(audit_only["token"]), bearer(auditor_session)):
        for method, path, scope in writes:
            r = await client.request(method, path, headers=h, json={})
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert r.json()["missing_scope"] == scope
    # And in the database: the API role can only read the trail, whoever it runs as.
    for table in ("token_audit_log", "token_usage", "audit_seal"):
        for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert not await api_conn.fetchval("select has_table_privilege('tenant_api', $1, $2)",
                                               f"public.{table}", privilege), (table, privilege)
    assert not await api_conn.fetchval(
        "select has_function_privilege('tenant_api', 'app.audit_purge(timestamptz, uuid)', 'EXECUTE')")
    assert await admin_conn.fetchval("select name from agent where id = $1", uuid.UUID(agent["id"])) == "ro"


async def test_graceful_shutdown_writes_pending_usage(client, settings, admin_conn):
    t = await signup(client)
    app = create_app(settings.with_audit(usage_flush_seconds=3600, usage_batch_size=10_000))
    async with AsyncTestClient(app) as c:
        for _ in range(3):
            assert (await c.get("/v1/me", headers=t.token_auth)).status_code == 200
        assert app.state.usage.written == 0  # nothing flushed yet: an hour to go
    rows = await admin_conn.fetch("select route from token_usage where token_id = $1", uuid.UUID(t.token_id))
    assert [r["route"] for r in rows] == ["/v1/me"] * 3


async def test_usage_recording_adds_no_round_trip_to_the_request(client, settings):
    """A read runs the same statements with recording on or off, and only these four:
    BEGIN, auth.begin_request, the query, COMMIT (counted on the server connections
    themselves, whichever path, ORM or raw asyncpg, the route takes)."""
    t = await signup(client)

    async def statements(record: bool) -> list[str]:
        status, seen = await request_statements(settings.with_audit(record_usage=record), t, "GET", "/v1/agents")
        assert status == 200
        return seen

    on, off = await statements(True), await statements(False)
    assert on == off, (on, off)
    assert len(on) == 4 and on[0].upper().startswith("BEGIN") and on[-1].upper().startswith("COMMIT"), on
    assert "auth.begin_request" in on[1], on
