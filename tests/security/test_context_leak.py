"""The request context never outlives its transaction: with ONE pooled connection serving
interleaved requests of two organizations, each request sees only its own organization,
and the connection carries no context between requests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text

from tenant_api.app import create_app
from tests.support.tenants import Tenant, bearer, make_token, signup
from tests.support.security import begin_request, isolated_tables, q

ROUNDS = 12


@pytest.fixture(scope="module")
async def one_connection_client(settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second app whose pool holds ONE connection, served in the test's own event loop
    (httpx's ASGI transport awaits the app in the calling task; Litestar's test client
    runs each request to completion in a portal thread, which would serialize them), so
    asyncio.gather really interleaves the requests."""
    app = create_app(settings.with_database(pool_size=1, max_overflow=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c
    await app.state.engine.dispose()


async def org_agents(admin_conn, tenant: Tenant) -> set[str]:
    rows = await admin_conn.fetch("select id from agent where organization_id = $1", uuid.UUID(tenant.organization_id))
    return {str(r["id"]) for r in rows}


async def test_interleaved_requests_on_one_connection_see_only_their_own_rows(
        client, one_connection_client, admin_conn):
    c = one_connection_client
    engine = c.app.state.engine
    assert engine.pool.size() == 1 and engine.pool.overflow() <= 0
    a, b = await signup(client, f"leaka{uuid.uuid4().hex[:6]}"), await signup(client, f"leakb{uuid.uuid4().hex[:6]}")
    seed = {}
    readers = {t.organization_id: bearer((await make_token(client, t, ["agents:read"]))["token"]) for t in (a, b)}
    for t in (a, b):
        r = await c.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "seed"})
        assert r.status_code == 201, r.text
        seed[t.organization_id] = r.json()["id"]

    in_flight = max_in_flight = 0

    async def call(kind: str, tenant: Tenant, other: Tenant, i: int):
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        try:
            return await request(kind, tenant, other, i)
        finally:
            in_flight -= 1

    async def request(kind: str, tenant: Tenant, other: Tenant, i: int):
        if kind == "list":
            r = await c.get("/v1/agents", headers=tenant.token_auth, params={"limit": 200})
        elif kind == "create":
            r = await c.post("/v1/agents", headers=tenant.token_auth, json={"project_id": tenant.project_id, "name": f"n{i}"})
        elif kind == "duplicate":  # fails inside the transaction (unique violation, rolled back)
            r = await c.post("/v1/agents", headers=tenant.token_auth, json={"project_id": tenant.project_id, "name": "seed"})
        elif kind == "other":  # the other organization's agent
            r = await c.get(f"/v1/agents/{seed[other.organization_id]}", headers=tenant.token_auth)
        elif kind == "me":
            r = await c.get("/v1/me", headers=tenant.session_auth)
        else:  # refused by the scope check after begin_request set the context (then rolled back)
            r = await c.post("/v1/agents", headers=readers[tenant.organization_id],
                             json={"project_id": tenant.project_id, "name": f"r{i}"})
        return kind, tenant, r

    calls = [call(kind, t, other, i)
             for i in range(ROUNDS)
             for t, other in ((a, b), (b, a))
             for kind in ("list", "create", "duplicate", "other", "me", "forbidden", "list")]
    results = await asyncio.gather(*calls)
    assert max_in_flight > 10, max_in_flight  # really concurrent, all queued on one connection

    own = {t.organization_id: await org_agents(admin_conn, t) for t in (a, b)}
    created = {a.organization_id: set(), b.organization_id: set()}
    for kind, t, r in results:
        mine, theirs = own[t.organization_id], own[(b if t is a else a).organization_id]
        if kind == "list":
            assert r.status_code == 200, r.text
            ids = {x["id"] for x in r.json()["items"]}
            assert seed[t.organization_id] in ids
            assert ids <= mine and not ids & theirs, f"{t.email} saw other rows: {ids - mine}"
        elif kind == "create":
            assert r.status_code == 201, r.text
            assert r.json()["project_id"] == t.project_id
            created[t.organization_id].add(r.json()["id"])
        elif kind == "duplicate":
            assert r.status_code == 409, r.text
        elif kind == "other":
            assert r.status_code == 404, r.text
        elif kind == "me":
            assert r.status_code == 200 and r.json()["organization_id"] == t.organization_id, r.text
        else:
            assert r.status_code == 403 and r.json()["missing_scope"] == "agents:write", r.text
    for t in (a, b):
        assert len(created[t.organization_id]) == ROUNDS and created[t.organization_id] <= own[t.organization_id]
        # every write is attributed to the token that made it, under interleaving too
        rows = await admin_conn.fetch(
            "select row_id::text, token_id::text, organization_id::text from token_audit_log"
            " where table_name = 'agent' and row_id = any($1::uuid[])",
            [uuid.UUID(x) for x in created[t.organization_id]])
        assert {(r["row_id"], r["token_id"], r["organization_id"]) for r in rows} == {
            (x, t.token_id, t.organization_id) for x in created[t.organization_id]}

    # The pool's one connection, right after all that: no context, no rows.
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "select current_user, app.current_organization_id()::text as org,"
            " app.current_token_id()::text as tok, (select count(*) from agent) as agents"))).one()
    assert row.current_user == "tenant_api"
    assert (row.org or "") == "" and (row.tok or "") == "" and row.agents == 0, row


async def test_raw_connection_after_a_committed_request(client, api_conn, admin_conn):
    t = await signup(client, f"leakr{uuid.uuid4().hex[:6]}")
    tx = api_conn.transaction()
    await tx.start()
    await begin_request(api_conn, t.token)
    assert await api_conn.fetchval("select app.current_organization_id()::text") == t.organization_id
    assert await api_conn.fetchval("select count(*) from workspace") >= 1
    await tx.commit()
    assert await api_conn.fetchval("select current_setting('backtrace_functions')") == ""
    for table, _ in await isolated_tables(admin_conn):
        assert await api_conn.fetchval(f"select count(*) from public.{q(table)}") == 0, table
    assert await api_conn.fetchval("select count(*) from user_account") == 0
