"""auth.begin_request computes each request's effective scopes: the token's scopes (a
write implying its read) intersected with what the user's role allows now. The
computation is written for speed (policies/auth.sql); this checks it against the Python
definition for every role, token scope sets, and sessions."""

import datetime as dt
import hashlib
import uuid

import pytest

from tenant_api.auth.scopes import ROLE_SCOPES, SCOPES, expand
from tenant_api.db.context import BEGIN_REQUEST_SQL
from tests.conftest import signup

TOKEN_SCOPES = [
    sorted(SCOPES),
    ["agents:write"],
    ["agents:read", "tasks:write", "billing:write", "audit:read"],
    ["tokens:write", "members:read"],
    ["org:read"],
    ["audit:read"],
    ["billing:write"],
]


@pytest.mark.parametrize("role", sorted(ROLE_SCOPES))
async def test_effective_scopes_match_the_definition(client, admin_conn, api_conn, role):
    owner = await signup(client)
    org = uuid.UUID(owner.organization_id)
    user_id = uuid.uuid4()
    await admin_conn.execute(
        "insert into user_account (id, email, password_hash, display_name) values ($1, $2, 'x', 'x')",
        user_id, f"{user_id.hex}@example.com")
    await admin_conn.execute(
        "insert into organization_membership (organization_id, user_id, role) values ($1, $2, $3)", org, user_id, role)
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
        assert row["status"] == "ok" and row["role"] == role
        assert row["scopes"] == sorted(expand(scopes) & role_scopes), (role, scopes)

    session_id = await admin_conn.fetchval(
        "insert into platform_token (organization_id, user_id, kind, name, prefix, expires_at)"
        " values ($1, $2, 'session', 's', 's', $3) returning id", org, user_id, expires)
    async with api_conn.transaction():
        row = await api_conn.fetchrow(BEGIN_REQUEST_SQL, None, session_id, org, "t")
        # The context the policies read holds exactly these scopes.
        in_context = await api_conn.fetchval("select app.current_scopes()")
    assert row["status"] == "ok" and row["scopes"] == sorted(role_scopes) == in_context
