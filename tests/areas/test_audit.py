"""The audit trail: every write through the API leaves exactly the expected rows,
attributed to the token and request that made it; secrets never reach it; the API
role can read it (with audit:read) and never change it."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import jwt
import pytest

from tests.support.tenants import Tenant, bearer, make_token, signup
from tests.support.security import as_request, assert_problem, attempt, insert_copy_sql, some_row


@pytest.fixture(scope="module")
async def tenant(client) -> Tenant:
    return await signup(client, f"aud{uuid.uuid4().hex[:8]}")


def session_id(tenant: Tenant) -> str:
    return jwt.decode(tenant.session, options={"verify_signature": False})["sid"]


async def audited(client, admin, method: str, path: str, headers: dict[str, str], body: Any = None,
                  status: int | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Make one request; return its JSON and the audit rows carrying its request id."""
    r = await client.request(method, path, headers=headers, json=body)
    expected = status or {"POST": 201, "PATCH": 200, "DELETE": 204}.get(method, 200)
    assert r.status_code == expected, f"{method} {path}: {r.status_code} {r.text}"
    rid = r.headers["x-request-id"]
    rows = await admin.fetch(
        "select organization_id::text, token_id::text, user_id::text, request_id, table_name, row_id::text, action,"
        " changes::text as changes from token_audit_log where request_id = $1 order by id", rid)
    out = [{**dict(row), "changes": json.loads(row["changes"])} for row in rows]
    for row in out:
        assert row["request_id"] == rid
    return (r.json() if r.content else None), out


def assert_rows(rows: list[dict[str, Any]], tenant: Tenant, expected: set[tuple[str, str, str]], token_id: str) -> None:
    assert len(rows) == len(expected), rows
    assert {(r["table_name"], r["action"], r["row_id"]) for r in rows} == expected, rows
    for r in rows:
        assert (r["organization_id"], r["token_id"], r["user_id"]) == (tenant.organization_id, token_id, tenant.user_id), r


async def test_resource_writes_are_audited_exactly(client, admin_conn, tenant):
    h, tok = tenant.token_auth, tenant.token_id
    ws, rows = await audited(client, admin_conn, "POST", "/v1/workspaces", h, {"name": "w-audit", "description": "d"})
    assert_rows(rows, tenant, {("workspace", "INSERT", ws["id"])}, tok)
    assert rows[0]["changes"]["name"] == "w-audit" and rows[0]["changes"]["organization_id"] == tenant.organization_id

    _, rows = await audited(client, admin_conn, "PATCH", f"/v1/workspaces/{ws['id']}", h, {"name": "w-audit-2"})
    assert_rows(rows, tenant, {("workspace", "UPDATE", ws["id"])}, tok)
    changes = rows[0]["changes"]
    assert set(changes) == {"name", "updated_at"}, changes
    assert changes["name"] == {"old": "w-audit", "new": "w-audit-2"}

    prj, rows = await audited(client, admin_conn, "POST", "/v1/projects", h, {"workspace_id": ws["id"], "name": "p"})
    assert_rows(rows, tenant, {("project", "INSERT", prj["id"])}, tok)
    _, rows = await audited(client, admin_conn, "PATCH", f"/v1/projects/{prj['id']}", h, {"description": "new"})
    assert_rows(rows, tenant, {("project", "UPDATE", prj["id"])}, tok)
    assert rows[0]["changes"]["description"] == {"old": "", "new": "new"}

    agent, rows = await audited(client, admin_conn, "POST", "/v1/agents", h, {"project_id": prj["id"], "name": "ag"})
    assert_rows(rows, tenant, {("agent", "INSERT", agent["id"])}, tok)
    _, rows = await audited(client, admin_conn, "PATCH", f"/v1/agents/{agent['id']}", h, {"status": "paused"})
    assert_rows(rows, tenant, {("agent", "UPDATE", agent["id"])}, tok)
    assert rows[0]["changes"]["status"] == {"old": "active", "new": "paused"}
    _, rows = await audited(client, admin_conn, "DELETE", f"/v1/agents/{agent['id']}", h)
    assert_rows(rows, tenant, {("agent", "DELETE", agent["id"])}, tok)
    assert rows[0]["changes"]["name"] == "ag" and rows[0]["changes"]["status"] == "paused"

    # a cascade is attributed too: deleting a project deletes its agents
    agent2, _ = await audited(client, admin_conn, "POST", "/v1/agents", h, {"project_id": prj["id"], "name": "ag2"})
    _, rows = await audited(client, admin_conn, "DELETE", f"/v1/projects/{prj['id']}", h)
    assert_rows(rows, tenant, {("project", "DELETE", prj["id"]), ("agent", "DELETE", agent2["id"])}, tok)
    _, rows = await audited(client, admin_conn, "DELETE", f"/v1/workspaces/{ws['id']}", h)
    assert_rows(rows, tenant, {("workspace", "DELETE", ws["id"])}, tok)

    # reads leave nothing
    _, rows = await audited(client, admin_conn, "GET", "/v1/workspaces", h)
    assert rows == []


async def test_organization_update_is_audited(client, admin_conn, tenant):
    before = (await client.get("/v1/organization", headers=tenant.token_auth)).json()["name"]
    _, rows = await audited(client, admin_conn, "PATCH", "/v1/organization", tenant.token_auth, {"name": "Renamed Org"})
    assert_rows(rows, tenant, {("organization", "UPDATE", tenant.organization_id)}, tenant.token_id)
    assert rows[0]["changes"]["name"] == {"old": before, "new": "Renamed Org"}


async def test_session_writes_are_attributed_to_the_session(client, admin_conn, tenant):
    ws, rows = await audited(client, admin_conn, "POST", "/v1/workspaces", tenant.session_auth, {"name": "by-session"})
    assert_rows(rows, tenant, {("workspace", "INSERT", ws["id"])}, session_id(tenant))


async def test_token_lifecycle_is_audited_without_secrets(client, admin_conn, tenant):
    created, rows = await audited(client, admin_conn, "POST", "/v1/tokens", tenant.token_auth,
                                  {"name": "audited", "scopes": ["agents:read"]})
    assert_rows(rows, tenant, {("platform_token", "INSERT", created["id"])}, tenant.token_id)
    changes = rows[0]["changes"]
    assert "token_hash" not in changes and changes["created_by_token_id"] == tenant.token_id
    assert changes["scopes"] == ["agents:read"] and changes["kind"] == "api"

    rotated, rows = await audited(client, admin_conn, "POST", f"/v1/tokens/{created['id']}/rotate", tenant.token_auth, status=200)
    assert_rows(rows, tenant, {("platform_token", "UPDATE", created["id"])}, tenant.token_id)
    changes = rows[0]["changes"]
    assert changes["token_hash"] == "[redacted]"  # an auditor sees that the secret changed, not the secret
    assert changes["prefix"] == {"old": created["prefix"], "new": rotated["prefix"]}

    _, rows = await audited(client, admin_conn, "DELETE", f"/v1/tokens/{created['id']}", tenant.token_auth)
    assert_rows(rows, tenant, {("platform_token", "UPDATE", created["id"])}, tenant.token_id)
    changes = rows[0]["changes"]
    assert changes["revoked_at"]["old"] is None and changes["revoked_at"]["new"] is not None
    assert set(changes) == {"revoked_at", "updated_at"}, changes

    # no token hash, no secret, no password hash anywhere in the whole log
    hashes = [r["h"] for r in await admin_conn.fetch(
        "select encode(token_hash, 'hex') as h from platform_token where token_hash is not null")]
    assert len(hashes) >= 2
    secrets = [tenant.token, created["token"], rotated["token"]]
    log = await admin_conn.fetchval("select string_agg(changes::text, ' ') from token_audit_log")
    for needle in [*hashes, *secrets]:
        assert needle not in log and needle[:16] not in log, "a token secret or hash reached the audit log"
    assert "$argon2" not in log
    assert await admin_conn.fetchval(
        "select count(*) from token_audit_log where changes ? 'token_hash'"
        " and changes ->> 'token_hash' <> '[redacted]'") == 0


async def test_last_used_at_updates_leave_no_audit_row(client, admin_conn, tenant):
    tok = uuid.UUID(tenant.token_id)
    count = "select count(*) from token_audit_log where organization_id = $1"
    org = uuid.UUID(tenant.organization_id)
    n = await admin_conn.fetchval(count, org)
    # older than a minute: the next request touches it (and that is noise, not an event)
    await admin_conn.execute("update platform_token set last_used_at = now() - interval '5 minutes' where id = $1", tok)
    stale = await admin_conn.fetchval("select last_used_at from platform_token where id = $1", tok)
    _, rows = await audited(client, admin_conn, "GET", "/v1/me", tenant.token_auth)
    assert await admin_conn.fetchval("select last_used_at from platform_token where id = $1", tok) > stale
    assert rows == []
    assert await admin_conn.fetchval(count, org) == n


# --- /v1/audit/events ------------------------------------------------------------------


async def events(client, h: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/audit/events", headers=h, params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    assert r.json()["next_cursor"] is None
    return r.json()["items"]


async def test_audit_events_filters(client, admin_conn, tenant):
    sid = session_id(tenant)
    ws, _ = await audited(client, admin_conn, "POST", "/v1/workspaces", tenant.session_auth, {"name": "filters-1"})
    _, rows = await audited(client, admin_conn, "PATCH", f"/v1/workspaces/{ws['id']}", tenant.token_auth, {"name": "filters-2"})
    patch_event_time = await admin_conn.fetchval(
        "select occurred_at from token_audit_log where request_id = $1", rows[0]["request_id"])
    await audited(client, admin_conn, "DELETE", f"/v1/workspaces/{ws['id']}", tenant.token_auth)

    everything = await events(client, tenant.token_auth)
    assert len(everything) > 5

    by_session = await events(client, tenant.token_auth, token_id=sid)
    assert by_session and {e["token_id"] for e in by_session} == {sid}
    assert ("workspace", "INSERT", ws["id"]) in {(e["table_name"], e["action"], e["row_id"]) for e in by_session}

    workspaces = await events(client, tenant.token_auth, table="workspace")
    assert workspaces and {e["table_name"] for e in workspaces} == {"workspace"}
    assert len(workspaces) < len(everything)

    deletes = await events(client, tenant.token_auth, action="DELETE")
    assert deletes and {e["action"] for e in deletes} == {"DELETE"}
    assert ws["id"] in {e["row_id"] for e in deletes}

    combined = await events(client, tenant.token_auth, token_id=tenant.token_id, table="workspace", action="UPDATE")
    assert [(e["row_id"], e["changes"]["name"]["new"]) for e in combined if e["row_id"] == ws["id"]] == [
        (ws["id"], "filters-2")]
    assert all(e["token_id"] == tenant.token_id and e["table_name"] == "workspace" and e["action"] == "UPDATE"
               for e in combined)

    since, until = patch_event_time - dt.timedelta(milliseconds=1), patch_event_time + dt.timedelta(milliseconds=1)
    window = await events(client, tenant.token_auth, since=since.isoformat(), until=until.isoformat())
    assert rows[0]["row_id"] in {e["row_id"] for e in window if e["action"] == "UPDATE"}
    for e in window:
        assert since <= dt.datetime.fromisoformat(e["occurred_at"]) <= until, e
    assert await events(client, tenant.token_auth, since=(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()) == []
    assert await events(client, tenant.token_auth, until="2000-01-01T00:00:00+00:00") == []

    assert await events(client, tenant.token_auth, table="x'; drop table token_audit_log; --") == []
    assert_problem(await client.get("/v1/audit/events", headers=tenant.token_auth, params={"action": "TRUNCATE"}), 422)

    # pagination walks everything once
    seen, cursor = [], None
    while True:
        r = await client.get("/v1/audit/events", headers=tenant.token_auth, params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [e["id"] for e in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) and set(seen) >= {e["id"] for e in everything}


async def test_audit_events_require_audit_read(client, tenant):
    for scopes in (["agents:read"], ["tokens:write", "org:write"]):
        tok = await make_token(client, tenant, scopes)
        body = assert_problem(await client.get("/v1/audit/events", headers=bearer(tok["token"])), 403, "audit:read")
        assert body["missing_scope"] == "audit:read"
    tok = await make_token(client, tenant, ["audit:read"])
    assert (await client.get("/v1/audit/events", headers=bearer(tok["token"]))).status_code == 200


async def test_project_restricted_credential_reads_nothing_outside_its_projects(client, tenant):
    """The log records every project's rows: a credential restricted to project P must not
    learn from it what happens in project Q (docs/isolation.md: outside the restriction is 404)."""
    r = await client.post("/v1/projects", headers=tenant.token_auth, json={"workspace_id": tenant.workspace_id, "name": "audit-Q"})
    assert r.status_code == 201, r.text
    q = r.json()["id"]
    r = await client.post("/v1/agents", headers=tenant.token_auth, json={"project_id": q, "name": "secret-agent-in-Q"})
    assert r.status_code == 201, r.text
    q_rows = {q, r.json()["id"]}
    tok = await make_token(client, tenant, ["audit:read", "agents:read"], project_ids=[tenant.project_id])
    r = await client.get("/v1/audit/events", headers=bearer(tok["token"]), params={"limit": 200})
    assert r.status_code == 200, r.text
    assert not {e["row_id"] for e in r.json()["items"]} & q_rows
    assert "secret-agent-in-Q" not in r.text
    # the unrestricted token does see them (the check above is not vacuous)
    assert q_rows <= {e["row_id"] for e in await events(client, tenant.token_auth)}


async def test_api_role_cannot_change_the_audit_log(client, tenant, api_conn, admin_conn):
    row = await some_row(admin_conn, "token_audit_log", "organization_id", tenant.organization_id)
    row["id"] = str(uuid.uuid4())
    before = await admin_conn.fetchval("select md5(string_agg(x::text, ',' order by x.id)) from token_audit_log x")
    async with as_request(api_conn, tenant.token):
        assert await api_conn.fetchval("select count(*) from token_audit_log") > 0  # it can read its own
        for sql, args in (
            ("update token_audit_log set action = 'INSERT'", ()),
            ("update token_audit_log set changes = '{}' where organization_id = $1", (uuid.UUID(tenant.organization_id),)),
            ("delete from token_audit_log", ()),
            ("delete from token_audit_log where organization_id = $1", (uuid.UUID(tenant.organization_id),)),
            ("truncate token_audit_log", ()),
            (insert_copy_sql("token_audit_log"), (json.dumps(row),)),
        ):
            assert await attempt(api_conn, sql, *args) == (None, "42501"), sql
        # nor through the audit trigger's function
        assert (await attempt(api_conn, "select app.audit_row()"))[1] in ("42501", "0A000")
    assert await admin_conn.fetchval("select md5(string_agg(x::text, ',' order by x.id)) from token_audit_log x") == before
