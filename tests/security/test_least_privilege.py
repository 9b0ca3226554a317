"""Least privilege inside PostgreSQL (issue 10): each finding attacked over raw SQL, as
the API role's login (what an attacker holding DATABASE_URL gets), and over HTTP."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tenant_api.background import DUTIES
from tests.support.tenants import bearer, make_token, signup
from tests.support.members_flow import join, login
from tests.support.security import as_request


@pytest.mark.parametrize("name", sorted(DUTIES))
async def test_the_api_role_calls_no_background_duty(api_conn, login_conn, name):
    """Today's finding: auth.claim_invite_mail(100, '100 years') as tenant_api returned
    every organization's invite mails. Every duty's functions are refused to the API
    role's login (and to the login role's), whatever the arguments."""
    for function in DUTIES[name].functions:
        args = await api_conn.fetchval(
            "select pg_get_function_identity_arguments(p.oid) from pg_proc p join pg_namespace n"
            " on n.oid = p.pronamespace where n.nspname || '.' || p.proname = $1", function)
        nulls = ", ".join("null" for a in args.split(",") if a.strip()) if args else ""
        for conn in (api_conn, login_conn):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"select * from {function}({nulls})")


async def test_claim_invite_mail_is_the_mailers_alone(client, api_conn, jobs_conn, worker_conn):
    await signup(client, verified=False)  # a verification mail waits in the outbox
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch("select * from auth.claim_invite_mail(100, '100 years')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the scheduler process's login neither
        await worker_conn.fetch("select * from auth.claim_invite_mail(100, '100 years')")
    # The mailer's login may (rolled back: nothing postponed).
    tx = jobs_conn.transaction()
    await tx.start()
    try:
        assert isinstance(await jobs_conn.fetch("select * from auth.claim_invite_mail(1, '1 second')"), list)
    finally:
        await tx.rollback()


async def test_the_api_role_reads_no_password_hash_and_opens_no_session(client, api_conn, login_conn):
    t = await signup(client)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch("select * from auth.login_lookup($1)", t.email)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch("select * from auth.create_session($1, null, interval '1 hour', 'x')",
                             uuid.UUID(t.user_id))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch("select password_hash from user_account")
    for fn in ("auth.signup('a@b.c', 'h', 'n', 'r', interval '1 day', null, null, null, null, true)",
               "auth.verify_email('\\x00', 'r')"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.fetch(f"select * from {fn}")
    # The login role (the public auth routes' connection) does: login works over HTTP.
    assert (await login_conn.fetchrow("select * from auth.login_lookup($1)", t.email))["password_hash"]
    r = await client.post("/v1/auth/login", json={"email": t.email, "password": t.password})
    assert r.status_code == 200, r.text


# --- membership rules ---------------------------------------------------------------

async def test_an_organization_cannot_adopt_another_organizations_owner(client, api_conn, admin_conn):
    """Today's finding: with a valid token of B, `insert into organization_membership (B,
    A's owner)` succeeded and A's owner's email became readable to B."""
    a, b = await signup(client), await signup(client)
    async with as_request(api_conn, b.token):
        for role in ("member", "owner"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with api_conn.transaction():
                    await api_conn.execute("insert into organization_membership (organization_id, user_id, role)"
                                           " values ($1, $2, $3)", uuid.UUID(b.organization_id),
                                           uuid.UUID(a.user_id), role)
        assert await api_conn.fetchval("select count(*) from user_account where id = $1", uuid.UUID(a.user_id)) == 0
    r = await client.post("/v1/organization/members", headers=b.token_auth, json={"user_id": a.user_id, "role": "member"})
    assert r.status_code in (403, 422), r.text
    assert await admin_conn.fetchval("select count(*) from organization_membership where organization_id = $1"
                                     " and user_id = $2", uuid.UUID(b.organization_id), uuid.UUID(a.user_id)) == 0


async def test_owners_only_and_the_last_owner_stays(client, api_conn, admin_conn):
    owner, other = await signup(client), await signup(client)
    org = uuid.UUID(owner.organization_id)
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role)"
                             " values ($1, $2, 'admin')", org, uuid.UUID(other.user_id))
    # (tokens are made in the session's organization: log in there)
    admin_headers = await login(client, other, owner.organization_id)
    r = await client.post("/v1/tokens", headers=admin_headers, json={"name": "adm", "scopes": ["members:write"]})
    assert r.status_code == 201, r.text
    admin_token = r.json()["token"]

    async def refused(token: str, sql: str, *args: object) -> str:
        async with as_request(api_conn, token):
            try:
                async with api_conn.transaction():
                    await api_conn.execute(sql, *args)
            except asyncpg.PostgresError as exc:
                return exc.sqlstate
        return "accepted"

    # An admin (not an owner) makes themselves owner, demotes or removes the owner: refused.
    assert await refused(admin_token, "update organization_membership set role = 'owner' where user_id = $1",
                         uuid.UUID(other.user_id)) == "42501"
    assert await refused(admin_token, "update organization_membership set role = 'member' where user_id = $1",
                         uuid.UUID(owner.user_id)) == "42501"
    assert await refused(admin_token, "delete from organization_membership where user_id = $1",
                         uuid.UUID(owner.user_id)) == "42501"
    # A membership never moves to another user.
    assert await refused(owner.token, "update organization_membership set user_id = $1 where user_id = $2",
                         uuid.UUID(owner.user_id), uuid.UUID(other.user_id)) == "42501"
    # The last owner stays, even for themselves.
    assert await refused(owner.token, "delete from organization_membership where user_id = $1",
                         uuid.UUID(owner.user_id)) == "23514"
    assert await refused(owner.token, "update organization_membership set role = 'admin' where user_id = $1",
                         uuid.UUID(owner.user_id)) == "23514"
    # An owner may make an owner; then either may step down.
    assert await refused(owner.token, "update organization_membership set role = 'owner' where user_id = $1",
                         uuid.UUID(other.user_id)) == "accepted"
    assert await admin_conn.fetchval("select role from organization_membership where organization_id = $1"
                                     " and user_id = $2", org, uuid.UUID(owner.user_id)) == "owner"


async def test_joining_the_organization_ends_project_memberships(client, admin_conn):
    """A project member who later joins the organization leaves the project's member list:
    no stale project role stays visible or editable to project admins."""
    owner, member = await signup(client), await signup(client)
    await join(client, owner, member, owner.project_id, role="viewer")
    org = uuid.UUID(owner.organization_id)
    r = await client.get(f"/v1/projects/{owner.project_id}/members", headers=owner.token_auth)
    assert member.user_id in r.text
    r = await client.post("/v1/organization/members", headers=owner.token_auth, json={"user_id": member.user_id,
                                                                            "role": "member"})
    assert r.status_code == 201, r.text
    assert await admin_conn.fetchval("select count(*) from project_membership where organization_id = $1"
                                     " and user_id = $2", org, uuid.UUID(member.user_id)) == 0
    r = await client.get(f"/v1/projects/{owner.project_id}/members", headers=owner.token_auth)
    assert member.user_id not in r.text


# --- project-restricted credentials ---------------------------------------------------

async def test_a_restricted_auditor_sees_no_organization_wide_audit_data(client, admin_conn):
    t, colleague = await signup(client), await signup(client)
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role)"
                             " values ($1, $2, 'member')", uuid.UUID(t.organization_id), uuid.UUID(colleague.user_id))
    await login(client, colleague, t.organization_id)  # a session of another user in t's organization
    await client.get("/v1/me", headers=t.token_auth)  # some usage of the org-wide token
    narrow = await make_token(client, t, ["audit:read", "tokens:read"], project_ids=[t.project_id])
    h = bearer(narrow["token"])
    r = await client.get("/v1/audit/usage", headers=h)
    assert r.status_code == 200, r.text
    assert all(not b.get("requests") for b in r.json().get("items", [])), r.text
    r = await client.get("/v1/audit/verify", headers=h)
    assert r.status_code == 200 and r.json()["status"] != "tampered", r.text
    r = await client.get("/v1/tokens", headers=h)
    assert r.status_code == 200
    # its user's own tokens, never another user's (audit:read is organization-wide)
    assert r.json()["items"] and {x["user_id"] for x in r.json()["items"]} == {t.user_id}, r.text
    r = await client.get("/v1/tokens", headers=t.token_auth)  # the same with the unrestricted token: both users
    assert {x["user_id"] for x in r.json()["items"]} == {t.user_id, colleague.user_id}, r.text
    r = await client.get("/v1/audit/events", headers=h)
    assert r.status_code == 200 and r.json()["items"] == [], r.text


async def test_a_restricted_token_manages_only_tokens_inside_its_restriction(client, api_conn):
    t = await signup(client)
    narrow = await make_token(client, t, ["tokens:write"], project_ids=[t.project_id])
    inside = await make_token(client, t, ["tasks:read"], project_ids=[t.project_id])
    r = await client.delete(f"/v1/tokens/{t.token_id}", headers=bearer(narrow["token"]))
    assert r.status_code in (403, 404), r.text
    assert (await client.get("/v1/me", headers=t.token_auth)).status_code == 200  # the org-wide token still works
    async with as_request(api_conn, narrow["token"]):
        assert await api_conn.execute("update platform_token set revoked_at = now() where id = $1",
                                      uuid.UUID(t.token_id)) == "UPDATE 0"
    r = await client.delete(f"/v1/tokens/{inside['id']}", headers=bearer(narrow["token"]))
    assert r.status_code == 204, r.text


# --- direct messages ---------------------------------------------------------------------

async def test_a_dm_belongs_to_its_members(client, admin_conn, api_conn):
    t, colleague = await signup(client), await signup(client)
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role)"
                             " values ($1, $2, 'admin')", uuid.UUID(t.organization_id), uuid.UUID(colleague.user_id))
    admin_h = await login(client, colleague, t.organization_id)
    agent = (await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "bot"})).json()
    r = await client.post("/v1/conversations", headers=t.token_auth, json={
        "project_id": t.project_id, "kind": "DM",
        "members": [{"member_type": "USER", "member_id": t.user_id}, {"member_type": "AGENT", "member_id": agent["id"]}]})
    assert r.status_code == 201, r.text
    dm = r.json()
    r = await client.post(f"/v1/conversations/{dm['id']}/messages", headers=t.token_auth, json={"body": "secret words"})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v1/conversations/{dm['id']}/messages", headers=t.token_auth)).status_code == 200
    # An organization admin (conversations:write, audit:read) sees neither the DM, nor its
    # members, nor its messages, nor can post in it.
    assert (await client.get(f"/v1/conversations/{dm['id']}", headers=admin_h)).status_code == 404
    r = await client.get("/v1/conversations", headers=admin_h, params={"kind": "DM"})
    assert dm["id"] not in r.text
    for path in ("messages", "members"):
        r = await client.get(f"/v1/conversations/{dm['id']}/{path}", headers=admin_h)
        assert r.status_code == 404 or r.json()["items"] == [], r.text
    r = await client.post(f"/v1/conversations/{dm['id']}/messages", headers=admin_h, json={"body": "hi"})
    assert r.status_code in (403, 404), r.text
    # Over raw SQL, as the admin's session: nothing either.
    r = await client.post("/v1/tokens", headers=admin_h, json={"name": "a", "scopes": ["conversations:read"]})
    async with as_request(api_conn, r.json()["token"]):
        for table in ("conversation", "conversation_member", "conversation_message"):
            column = "id" if table == "conversation" else "conversation_id"
            assert await api_conn.fetchval(f"select count(*) from {table} where {column} = $1",
                                           uuid.UUID(dm["id"])) == 0, table
    # Nor can the admin create a DM between others: a 422 naming the members, nothing written.
    r = await client.post("/v1/conversations", headers=admin_h, json={
        "project_id": t.project_id, "kind": "DM",
        "members": [{"member_type": "USER", "member_id": t.user_id}, {"member_type": "AGENT", "member_id": agent["id"]}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "members", r.text
    assert await admin_conn.fetchval("select count(*) from conversation where organization_id = $1 and kind = 'DM'",
                                     uuid.UUID(t.organization_id)) == 1
    # The audit trail, which admins and auditors read, records that a message was posted,
    # never its body.
    rows = await admin_conn.fetch("select changes::text as c from token_audit_log where table_name ="
                                  " 'conversation_message' and organization_id = $1", uuid.UUID(t.organization_id))
    assert rows and not any("secret words" in r["c"] for r in rows)
