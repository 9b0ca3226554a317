"""The generic read routes (list, get) run on the request's asyncpg connection without the
ORM (resources.base.ReadQueries, auth.request.provide_read). They must keep every promise
of the ORM path: organization filter, RLS underneath, project restriction, refusals, and
a connection that goes back to the pool with no transaction and no context."""

import hashlib
import uuid

import pytest
from litestar.exceptions import HTTPException

from tenant_api.auth.request import ReadTransaction
from tenant_api.db.context import BEGIN_REQUEST_SQL, Principal
from tenant_api.resources.agents import agents
from tenant_api.resources.base import ReadQueries
from tests.support.tenants import bearer, make_token, signup


async def _agent(client, tenant, name: str, project_id: str | None = None, **extra) -> dict:
    r = await client.post("/v1/agents", headers=tenant.token_auth,
                          json={"project_id": project_id or tenant.project_id, "name": name, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def test_get_and_list_stay_inside_the_organization(client):
    a, b = await signup(client), await signup(client)
    mine = await _agent(client, a, "mine")
    theirs = await _agent(client, b, "theirs")

    r = await client.get(f"/v1/agents/{mine['id']}", headers=a.token_auth)
    assert r.status_code == 200 and r.json() == mine
    r = await client.get(f"/v1/agents/{theirs['id']}", headers=a.token_auth)
    assert r.status_code == 404 and r.json()["detail"] == "agent not found"
    r = await client.get("/v1/agents", headers=a.token_auth)
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["items"]] == [mine["id"]]


async def test_list_pages_with_cursor_and_filters(client):
    t = await signup(client)
    made = [await _agent(client, t, f"p{i}", status="paused" if i == 1 else "active") for i in range(3)]
    r = await client.get("/v1/agents", params={"limit": 2}, headers=t.token_auth)
    assert r.status_code == 200
    page = r.json()
    assert [x["id"] for x in page["items"]] == [made[0]["id"], made[1]["id"]] and page["next_cursor"]
    r = await client.get("/v1/agents", params={"limit": 2, "cursor": page["next_cursor"]}, headers=t.token_auth)
    assert [x["id"] for x in r.json()["items"]] == [made[2]["id"]] and r.json()["next_cursor"] is None
    r = await client.get("/v1/agents", params={"status": "paused"}, headers=t.token_auth)
    assert [x["name"] for x in r.json()["items"]] == ["p1"]
    r = await client.get("/v1/agents", params={"project_id": t.project_id, "status": "active", "limit": 1}, headers=t.token_auth)
    assert [x["name"] for x in r.json()["items"]] == ["p0"] and r.json()["next_cursor"]
    r = await client.get("/v1/agents", params={"cursor": "not a cursor!"}, headers=t.token_auth)
    assert r.status_code == 422 and "cursor" in r.text


async def test_project_restriction_applies_on_reads(client):
    t = await signup(client)
    r = await client.post("/v1/projects", headers=t.token_auth, json={"workspace_id": t.workspace_id, "name": "other"})
    assert r.status_code == 201, r.text
    other_project = r.json()["id"]
    inside = await _agent(client, t, "inside")
    outside = await _agent(client, t, "outside", project_id=other_project)
    restricted = await make_token(client, t, ["agents:read"], project_ids=[t.project_id])

    r = await client.get(f"/v1/agents/{outside['id']}", headers=bearer(restricted["token"]))
    assert r.status_code == 404
    r = await client.get(f"/v1/agents/{inside['id']}", headers=bearer(restricted["token"]))
    assert r.status_code == 200
    r = await client.get("/v1/agents", headers=bearer(restricted["token"]))
    assert [x["id"] for x in r.json()["items"]] == [inside["id"]]


async def test_refusals_on_reads(client):
    t = await signup(client)
    agent = await _agent(client, t, "a")
    no_scope = await make_token(client, t, ["tasks:read"])
    for path in (f"/v1/agents/{agent['id']}", "/v1/agents"):
        r = await client.get(path, headers=bearer(no_scope["token"]))
        assert r.status_code == 403 and r.json()["missing_scope"] == "agents:read"
    revoked = await make_token(client, t, ["agents:read"])
    assert (await client.delete(f"/v1/tokens/{revoked['id']}", headers=t.session_auth)).status_code == 204
    r = await client.get(f"/v1/agents/{agent['id']}", headers=bearer(revoked["token"]))
    assert r.status_code == 401 and r.json()["detail"] == "credential revoked"
    forged = "tapi_" + "A" * 32 + "AAAAAA"
    r = await client.get("/v1/agents", headers=bearer(forged))
    assert r.status_code == 401


async def test_connections_return_clean_after_refused_and_failed_reads(client, admin_conn, database):
    t = await signup(client)
    no_scope = await make_token(client, t, ["tasks:read"])
    # More refusals and 404s than the pool has connections (pool_size 5 in the tests).
    for i in range(12):
        r = await client.get(f"/v1/agents/{uuid.uuid4()}", headers=t.token_auth if i % 2 else bearer(no_scope["token"]))
        assert r.status_code in (403, 404)
    # The pool still serves ORM writes and reads, on connections with no open transaction.
    await _agent(client, t, "after")
    r = await client.get("/v1/agents", headers=t.token_auth)
    assert [x["name"] for x in r.json()["items"]] == ["after"]
    stuck = await admin_conn.fetchval(
        "select count(*) from pg_stat_activity where usename = 'tenant_api' and datname = $1"
        " and state like 'idle in transaction%'", database.name)
    assert stuck == 0


async def test_rls_hides_other_organizations_even_if_the_filter_named_them(client, api_conn):
    """Defense in depth: ask the read queries for organization B's row in a transaction
    whose context is organization A's. The explicit filter says B; RLS says no."""
    a, b = await signup(client), await signup(client)
    theirs = await _agent(client, b, "theirs")
    async with api_conn.transaction():
        row = await api_conn.fetchrow(BEGIN_REQUEST_SQL, hashlib.sha256(a.token.encode()).digest(), None, None, "t")
        assert row["status"] == "ok"
        forged = Principal.from_row(row)
        forged = Principal(**{**{f: getattr(forged, f) for f in forged.__slots__},
                              "organization_id": uuid.UUID(b.organization_id)})
        queries = ReadQueries.for_resource(agents, agents.service_class())
        assert queries is not None
        with pytest.raises(HTTPException) as exc:
            await queries.get(ReadTransaction(api_conn, forged), uuid.UUID(theirs["id"]), {})
        assert exc.value.status_code == 404
        items, _ = await queries.page(ReadTransaction(api_conn, forged), 50, None, {})
        assert items == []


async def test_read_path_reconnects_an_idle_connection_that_was_invalidated(settings):
    """provide_read takes an idle pooled connection without SQLAlchemy's greenlet bridge;
    when that connection has to reconnect (it was invalidated), the bridge does it."""
    from litestar.testing import AsyncTestClient
    from sqlalchemy.util import greenlet_spawn

    from tenant_api.app import create_app

    app = create_app(settings.with_database(pool_size=1, max_overflow=0))
    async with AsyncTestClient(app) as client:
        t = await signup(client)
        agent = await _agent(client, t, "a")
        engine = app.state.engine
        pooled = await engine.raw_connection()
        await greenlet_spawn(pooled.invalidate)  # closes the connection; the record stays in the pool
        await greenlet_spawn(pooled.close)
        assert engine.sync_engine.pool.checkedin() == 1
        r = await client.get(f"/v1/agents/{agent['id']}", headers=t.token_auth)
        assert r.status_code == 200 and r.json()["id"] == agent["id"]
        r = await client.get("/v1/agents", headers=t.token_auth)
        assert r.status_code == 200 and [x["id"] for x in r.json()["items"]] == [agent["id"]]
