"""The database itself refuses a rotation that would hand out a wider secret, whatever
path the UPDATE comes from (the service checks first for a clear 403)."""

import hashlib
import uuid

import asyncpg
import pytest

from tenant_api.auth.credentials import token_hash
from tests.support.tenants import make_token, signup


async def _as(conn, token):
    row = await conn.fetchrow("select status from auth.begin_request($1, null, null, 'sql')", token_hash(token))
    assert row["status"] == "ok"


async def test_narrow_token_cannot_rotate_a_wider_token_in_sql(client, api_conn):
    t = await signup(client)
    narrow = await make_token(client, t, ["tokens:write"])
    new_hash = hashlib.sha256(b"attacker-chosen").digest()
    tr = api_conn.transaction()
    await tr.start()
    try:
        await _as(api_conn, narrow["token"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute(
                "update platform_token set token_hash = $1 where id = $2", new_hash, uuid.UUID(t.token_id)
            )
    finally:
        await tr.rollback()


async def test_token_can_be_rotated_in_sql_within_its_own_scopes(client, api_conn):
    t = await signup(client)
    narrow = await make_token(client, t, ["tokens:write", "agents:read"])
    tr = api_conn.transaction()
    await tr.start()
    try:
        await _as(api_conn, narrow["token"])
        status = await api_conn.execute(
            "update platform_token set token_hash = $1 where id = $2",
            hashlib.sha256(b"fresh").digest(), uuid.UUID(narrow["id"]),
        )
        assert status == "UPDATE 1"
    finally:
        await tr.rollback()
