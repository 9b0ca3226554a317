"""The request context cannot be forged, replayed or mixed by the API role itself.

A connection as tenant_api (a leaked password, an injected statement) is the attacker
here. The context lives in a parameter only tenant_auth may set (policies/context.sql);
these tests try every way the API role has to write, keep or combine one."""

import uuid

import asyncpg
import pytest

from tenant_api.auth.credentials import token_hash
from tests.support.tenants import signup
from tests.support.security import begin_request

CONTEXT = "backtrace_functions"
# What a context looks like (policies/context.sql): enough to claim an organization and
# every scope, were it accepted.
FORGED_FIELDS = 60


def forged(org: str) -> str:
    hex_org = uuid.UUID(org).hex
    return "_".join([hex_org, str(2**62 - 1), "0" * 32, "0" * 32, "", "00", *[hex_org] * FORGED_FIELDS])


async def visible_agents(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("select count(*) from agent")


@pytest.mark.parametrize("write", [
    "select set_config('backtrace_functions', $1, true)",
    "select set_config('backtrace_functions', $1, false)",
])
async def test_the_api_role_cannot_write_a_context(client, api_conn, admin_conn, write):
    victim = await signup(client)
    r = await client.post("/v1/agents", headers=victim.token_auth, json={"project_id": victim.project_id, "name": "secret"})
    assert r.status_code == 201
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with api_conn.transaction():
            await api_conn.execute(write, forged(victim.organization_id))
    for statement in (f"set {CONTEXT} = 'x'", f"set local {CONTEXT} = 'x'", f"reset {CONTEXT}",
                      f"alter role tenant_api set {CONTEXT} = 'x'"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with api_conn.transaction():
                await api_conn.execute(statement)
    async with api_conn.transaction():
        assert await visible_agents(api_conn) == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.execute(
            "insert into agent (organization_id, project_id, name) values ($1, $2, 'planted')",
            uuid.UUID(victim.organization_id), uuid.UUID(victim.project_id))
    assert await admin_conn.fetchval("select count(*) from agent where name = 'planted'") == 0


async def test_nor_as_a_connection_option(database, client):
    victim = await signup(client)
    url = database.api_url.replace("postgresql+asyncpg://", "postgresql://")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(url, server_settings={CONTEXT: forged(victim.organization_id)})


async def test_the_old_custom_settings_mean_nothing(client, api_conn):
    """What revision 0010 read (app.organization_id, app.scopes, ...) is just a setting now."""
    victim = await signup(client)
    async with api_conn.transaction():
        for name, value in {"app.organization_id": victim.organization_id, "app.scopes": "{agents:read}",
                            "app.project_ids": "all", "app.context_mac": "x"}.items():
            await api_conn.execute("select set_config($1, $2, true)", name, value)
        assert await visible_agents(api_conn) == 0
        assert await api_conn.fetchval("select app.current_organization_id()") is None


async def test_one_context_per_transaction(client, api_conn):
    """begin_request refuses to replace a context, so a statement can never combine two
    credentials (one's scopes, another's projects or organization)."""
    a, b = await signup(client), await signup(client)
    async with api_conn.transaction():
        await begin_request(api_conn, a.token)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with api_conn.transaction():
                await api_conn.fetchrow("select status from auth.begin_request($1, null, null, 'x')", token_hash(b.token))
        # ... not from inside another statement either
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with api_conn.transaction():
                await api_conn.fetch("select (select count(*) from project), b.status"
                                     " from auth.begin_request($1, null, null, 'x') b", token_hash(b.token))
        assert await api_conn.fetchval("select app.current_organization_id()::text") == a.organization_id


async def test_reset_all_only_empties_it(client, api_conn):
    """RESET ALL is the one thing the API role can do to the parameter: back to no context."""
    a = await signup(client)
    async with api_conn.transaction():
        await begin_request(api_conn, a.token)
        assert await api_conn.fetchval("select count(*) from project") == 1
        await api_conn.execute("reset all")
        assert await api_conn.fetchval(f"select current_setting('{CONTEXT}')") == ""
        assert await api_conn.fetchval("select count(*) from project") == 0


async def test_a_context_does_not_outlive_its_transaction(client, api_conn):
    """Replay: nothing of a committed request's context is left to reuse (the parameter is
    transaction-local, and nobody but tenant_auth can set it again)."""
    a = await signup(client)
    async with api_conn.transaction():
        await begin_request(api_conn, a.token)
        captured = await api_conn.fetchval(f"select current_setting('{CONTEXT}')")
    r = await client.delete(f"/v1/tokens/{a.token_id}", headers=a.session_auth)
    assert r.status_code == 204
    async with api_conn.transaction():
        assert await api_conn.fetchval(f"select current_setting('{CONTEXT}')") == ""
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with api_conn.transaction():
                await api_conn.execute(f"select set_config('{CONTEXT}', $1, true)", captured)
        assert await api_conn.fetchval("select count(*) from project") == 0


@pytest.mark.parametrize("fn", ["auth.enter_context(null, null, null, 'x')", "auth.leave_context('{}')",
                                "auth.credential_context(null, null, null, null, null)"])
async def test_api_role_cannot_call_the_context_functions(api_conn, fn):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetchval(f"select {fn}")


async def test_definer_functions_do_not_leave_their_context_behind(client, worker_conn, jobs_conn):
    """Functions that act for someone else for a moment (the scheduler's fire, the mailer's
    claim) put the caller's context back: none stays none. (Each as the login of the
    process that runs it: the API role may call neither.)"""
    victim = await signup(client)
    async with worker_conn.transaction():
        await worker_conn.fetchval("select auth.fire_schedule($1, gen_random_uuid(), now(), now() + interval '1 day')",
                                   uuid.UUID(victim.organization_id))
        assert await worker_conn.fetchval(f"select current_setting('{CONTEXT}')") == ""
    async with jobs_conn.transaction():
        await jobs_conn.fetch("select * from auth.claim_invite_mail(1, interval '1 minute')")
        assert await jobs_conn.fetchval(f"select current_setting('{CONTEXT}')") == ""


async def test_login_functions_leave_no_context_behind(login_conn):
    """auth.create_session acts in the user's organization for its insert only: the
    transaction that called it has no context afterwards. (As the login role: the API
    role may call neither.)"""
    api_conn = login_conn
    owner_email = f"{uuid.uuid4().hex}@e.com"
    async with api_conn.transaction():
        row = await api_conn.fetchrow(
            "select * from auth.signup($1, 'x', 'n', 'r', interval '1 day', sha256(gen_random_uuid()::text::bytea), sha256(gen_random_uuid()::text::bytea), 's', 'b')",
            owner_email)
        assert await api_conn.fetchval("select count(*) from project") == 0
        session = await api_conn.fetchrow("select * from auth.create_session($1, null, interval '1 hour', 'r')",
                                          row["user_id"])
        assert session is not None
        assert await api_conn.fetchval("select count(*) from project") == 0
        assert await api_conn.fetchval("select count(*) from platform_token") == 0


async def test_restricted_contexts_and_the_two_roles(client, api_conn):
    """A project-restricted context is read only by tenant_api_projects, an unrestricted one
    only by tenant_api: staying as the API role, or switching roles, gains nothing."""
    owner = await signup(client)
    r = await client.post("/v1/projects", headers=owner.token_auth, json={"workspace_id": owner.workspace_id, "name": "p2"})
    assert r.status_code == 201, r.text
    other_project = r.json()["id"]
    for project in (owner.project_id, other_project):
        r = await client.post("/v1/agents", headers=owner.token_auth, json={"project_id": project, "name": "a"})
        assert r.status_code == 201
    r = await client.post("/v1/tokens", headers=owner.session_auth,
                          json={"name": "one project", "scopes": ["agents:read"], "project_ids": [owner.project_id]})
    assert r.status_code == 201, r.text
    narrow = r.json()["token"]
    async with api_conn.transaction():
        row = await api_conn.fetchrow("select * from auth.begin_request($1, null, null, 'x')", token_hash(narrow))
        assert row["project_ids"] == [uuid.UUID(owner.project_id)]
        assert await visible_agents(api_conn) == 0  # the API role's policies never match it
        await api_conn.execute("set local role tenant_api_projects")
        assert await api_conn.fetchval("select array_agg(distinct project_id::text) from agent") == [owner.project_id]
    async with api_conn.transaction():
        await begin_request(api_conn, owner.token)
        assert await visible_agents(api_conn) == 2
        await api_conn.execute("set local role tenant_api_projects")
        assert await visible_agents(api_conn) == 0  # the twin's policies never match an unrestricted one
