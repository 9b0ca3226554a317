"""The request context cannot be forged by the API role itself.

Settings are writable by any session (set_config), so a connection as tenant_api (a
leaked password, an injected statement) could otherwise claim any organization. The
context is signed by the definer functions that establish it (policies/context.sql);
these tests attack it from a raw API-role connection."""

import uuid

import asyncpg
import pytest

from tenant_api.auth.credentials import token_hash
from tests.conftest import signup

FORGED = {
    "app.scopes": "{agents:read,agents:write,org:read,org:write,tokens:read,audit:read,members:read}",
    "app.project_ids": "all",
}


async def _forge(conn, org, user="", token=""):
    settings = {"app.organization_id": str(org), "app.user_id": str(user), "app.token_id": str(token), **FORGED}
    for name, value in settings.items():
        await conn.execute("select set_config($1, $2, true)", name, value)


async def test_hand_made_context_sees_and_writes_nothing(client, api_conn, admin_conn):
    victim = await signup(client)
    r = await client.post("/v1/agents", headers=victim.h, json={"project_id": victim.project_id, "name": "secret"})
    assert r.status_code == 201
    org = uuid.UUID(victim.organization_id)
    async with api_conn.transaction():
        await _forge(api_conn, org, victim.user_id, victim.token_id)
        assert await api_conn.fetchval("select current_setting('app.organization_id', true)") == str(org)
        for table in ("agent", "project", "workspace", "platform_token", "token_audit_log", "organization_membership"):
            assert await api_conn.fetchval(f"select count(*) from {table}") == 0, table
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute(
                "insert into agent (organization_id, project_id, name) values ($1, $2, 'planted')",
                org, uuid.UUID(victim.project_id))
    assert await admin_conn.fetchval("select count(*) from agent where name = 'planted'") == 0


async def test_a_signature_does_not_carry_over_to_another_organization(client, api_conn):
    attacker, victim = await signup(client), await signup(client)
    async with api_conn.transaction():
        row = await api_conn.fetchrow("select status from auth.begin_request($1, null, null, 'sig')",
                                      token_hash(attacker.token))
        assert row["status"] == "ok"
        assert await api_conn.fetchval("select count(*) from project") == 1  # the genuine context works
        # keep the genuine signature, swap the organization
        await api_conn.execute("select set_config('app.organization_id', $1, true)", victim.organization_id)
        assert await api_conn.fetchval("select count(*) from project") == 0
        await api_conn.execute("select set_config('app.organization_id', $1, true)", attacker.organization_id)
        await api_conn.execute("select set_config('app.scopes', $1, true)", FORGED["app.scopes"])  # widen scopes
        assert await api_conn.fetchval("select count(*) from project") == 0


@pytest.mark.parametrize("fn", ["app.context_mac('x')", "auth.sign_context()",
                                "auth.enter_context(null, null, null, 'x')", "auth.leave_context('{}')"])
async def test_api_role_cannot_sign(api_conn, fn):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetchval(f"select {fn}")


async def test_definer_functions_do_not_launder_a_hand_made_context(client, api_conn):
    """Functions that switch to a signed context of their own for a moment (the
    scheduler's fire, the mailer's claim) put the caller's settings back as they were:
    a hand-made context is not signed on the way."""
    victim = await signup(client)
    async with api_conn.transaction():
        await _forge(api_conn, victim.organization_id, victim.user_id, victim.token_id)
        await api_conn.fetchval("select auth.fire_schedule($1, gen_random_uuid(), now(), now() + interval '1 day')",
                                uuid.UUID(victim.organization_id))
        await api_conn.fetch("select * from auth.claim_invite_mail(1, interval '1 minute')")
        assert await api_conn.fetchval("select current_setting('app.organization_id', true)") == victim.organization_id
        assert await api_conn.fetchval("select count(*) from project") == 0


async def test_login_and_signup_functions_leave_no_context_behind(api_conn):
    """auth.signup / auth.create_session act in the new user's organization for their
    inserts only: the transaction that called them has no context afterwards."""
    async with api_conn.transaction():
        row = await api_conn.fetchrow(
            "select * from auth.signup($1, 'x', 'n', 'r', interval '1 day', $2, $3, 's', 'b')",
            f"{uuid.uuid4().hex}@e.com", b"h" * 32, b"n" * 32)
        assert await api_conn.fetchval("select count(*) from project") == 0
        session = await api_conn.fetchrow("select * from auth.create_session($1, null, interval '1 hour', 'r')",
                                          row["user_id"])
        assert session is not None
        assert await api_conn.fetchval("select count(*) from project") == 0
        assert await api_conn.fetchval("select count(*) from platform_token") == 0
