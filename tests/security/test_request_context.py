"""auth.begin_request computes each request's effective scopes: the token's scopes (a
write implying its read) intersected with what the user's role allows now. The
computation is written for speed (policies/auth.sql); this checks it against the Python
definition for every role, token scope sets, and sessions."""

import datetime as dt
import hashlib
import uuid

import pytest

from tenant_api.scopes import ROLE_SCOPES, SCOPE_BITS, SCOPES, expand, scopes_of_mask
from tenant_api.db.context import BEGIN_REQUEST_SQL
from tests.support.tenants import Tenant, signup

NIL = uuid.UUID(int=0)
SORTED_SCOPES = sorted(SCOPES)
# What each generated policy reads: the context's field for a scope (app.context_check).
PER_SCOPE_FIELDS = """
    select s as scope,
           nullif(split_part(current_setting('backtrace_functions'), '_', app.context_field(s, false)), '')::uuid as org
      from unnest($1::text[]) s
"""

TOKEN_SCOPES = [
    sorted(SCOPES),
    ["agents:write"],
    ["agents:read", "tasks:write", "billing:write", "audit:read"],
    ["tokens:write", "members:read"],
    ["org:read"],
    ["audit:read"],
    ["billing:write"],
]


async def new_member(client, admin_conn, role: str) -> tuple[Tenant, uuid.UUID, uuid.UUID]:
    """A new organization (by sign-up) and a user written straight into it with ``role``:
    (its owner, the organization's id, the user's id)."""
    owner = await signup(client)
    org = uuid.UUID(owner.organization_id)
    user_id = uuid.uuid4()
    await admin_conn.execute(
        "insert into user_account (id, email, password_hash, display_name) values ($1, $2, 'x', 'x')",
        user_id, f"{user_id.hex}@example.com")
    await admin_conn.execute(
        "insert into organization_membership (organization_id, user_id, role) values ($1, $2, $3)", org, user_id, role)
    return owner, org, user_id


@pytest.mark.parametrize("role", sorted(ROLE_SCOPES))
async def test_effective_scopes_match_the_definition(client, admin_conn, api_conn, role):
    _, org, user_id = await new_member(client, admin_conn, role)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    role_scopes = expand(ROLE_SCOPES[role])

    for scopes in TOKEN_SCOPES:
        secret = uuid.uuid4().hex.encode()
        await admin_conn.execute(
            "insert into platform_token (organization_id, user_id, kind, name, prefix, token_hash, scopes, expires_at)"
            " values ($1, $2, 'api', 't', 't', $3, $4, $5)", org, user_id, hashlib.sha256(secret).digest(), scopes,
            expires)
        async with api_conn.transaction():
            row = await api_conn.fetchrow(BEGIN_REQUEST_SQL, hashlib.sha256(secret).digest(), None, None, "t")
            held = await api_conn.fetch(PER_SCOPE_FIELDS, SORTED_SCOPES)
        assert row["status"] == "ok" and row["role"] == role
        assert scopes_of_mask(row["scope_mask"]) == expand(scopes) & role_scopes, (role, scopes)
        # the per-scope fields the policies compare with: the organization exactly where held
        assert {r["scope"] for r in held if r["org"] == org} == expand(scopes) & role_scopes, (role, scopes)
        assert all(r["org"] in (org, NIL) for r in held), held

    session_id = await admin_conn.fetchval(
        "insert into platform_token (organization_id, user_id, kind, name, prefix, expires_at)"
        " values ($1, $2, 'session', 's', 's', $3) returning id", org, user_id, expires)
    async with api_conn.transaction():
        row = await api_conn.fetchrow(BEGIN_REQUEST_SQL, None, session_id, org, "t")
        # The context the policies read holds exactly these scopes.
        in_context = await api_conn.fetchval("select app.current_scopes()")
    assert row["status"] == "ok" and scopes_of_mask(row["scope_mask"]) == role_scopes == set(in_context)


async def test_scope_catalog_matches_python(api_conn):
    rows = await api_conn.fetch("select scope, flag from app.scope_catalog()")
    assert [(r["scope"], r["flag"]) for r in rows] == [(s, 1 << i) for i, s in enumerate(SCOPE_BITS)]


async def test_membership_changes_reach_the_credential_in_the_same_transaction(client, admin_conn, api_conn):
    """Each credential keeps its effective context on its row (policies/platform_token.sql);
    every membership change recomputes it for that user's credentials, so the very next
    request sees it: a demotion, a removal, a return, a project membership."""
    owner, org, user_id = await new_member(client, admin_conn, "admin")
    secret = uuid.uuid4().hex.encode()
    await admin_conn.execute(
        "insert into platform_token (organization_id, user_id, kind, name, prefix, token_hash, scopes, expires_at)"
        " values ($1, $2, 'api', 't', 't', $3, $4, now() + interval '1 day')", org, user_id,
        hashlib.sha256(secret).digest(), sorted(SCOPES))

    async def begin() -> tuple[str, str | None, frozenset[str]]:
        async with api_conn.transaction():
            row = await api_conn.fetchrow(BEGIN_REQUEST_SQL, hashlib.sha256(secret).digest(), None, None, "t")
        return row["status"], row["role"], scopes_of_mask(row["scope_mask"])

    assert await begin() == ("ok", "admin", expand(ROLE_SCOPES["admin"]))
    await admin_conn.execute("update organization_membership set role = 'auditor' where user_id = $1", user_id)
    assert await begin() == ("ok", "auditor", expand(ROLE_SCOPES["auditor"]))
    await admin_conn.execute("delete from organization_membership where user_id = $1", user_id)
    assert (await begin())[0] == "not_member"
    await admin_conn.execute(
        "insert into project_membership (organization_id, project_id, user_id, role) values ($1, $2, $3, 'viewer')",
        org, uuid.UUID(owner.project_id), user_id)
    status, role, _scopes = await begin()
    assert (status, role) == ("ok", "project:viewer")
    async with api_conn.transaction():
        row = await api_conn.fetchrow(BEGIN_REQUEST_SQL, hashlib.sha256(secret).digest(), None, None, "t")
        assert row["project_ids"] == [uuid.UUID(owner.project_id)]
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role) values ($1, $2, 'member')",
                             org, user_id)
    assert await begin() == ("ok", "member", expand(ROLE_SCOPES["member"]))


async def test_the_last_used_touch_never_blocks_the_credentials_other_requests(client, admin_conn, api_conn):
    """begin_request stamps last_used_at (once a minute) and keeps that row lock until the
    request commits. The lock must be the one an UPDATE takes (NO KEY UPDATE): a FOR
    UPDATE lock would make every foreign-key check on the credential's row (a robot
    connection, an Idempotency-Key record, a webhook written by another request of the same
    credential) wait for this request -- under load it exhausted the pool for seconds."""
    owner = await signup(client)
    secret = owner.token.encode()
    row = await admin_conn.fetchrow("select organization_id, id from platform_token where token_hash = $1",
                                    hashlib.sha256(secret).digest())
    await admin_conn.execute("update platform_token set last_used_at = null where id = $1", row["id"])
    async with api_conn.transaction():
        principal = await api_conn.fetchrow(BEGIN_REQUEST_SQL, hashlib.sha256(secret).digest(), None, None, "t")
        assert principal["status"] == "ok"
        # the touch happened and its lock is held by this open transaction
        assert await admin_conn.fetchval(
            "select count(*) from platform_token where id = $1 and last_used_at is null", row["id"]) == 1
        async with admin_conn.transaction():
            # what a foreign-key check does: FOR KEY SHARE, here without waiting
            locked = await admin_conn.fetchval(
                "select id from platform_token where organization_id = $1 and id = $2 for key share nowait",
                row["organization_id"], row["id"])
            assert locked == row["id"]
            with pytest.raises(Exception, match="could not obtain lock"):
                await admin_conn.fetchval(
                    "select id from platform_token where organization_id = $1 and id = $2 for no key update nowait",
                    row["organization_id"], row["id"])
