"""The generic read routes (list, get) run on the request's asyncpg connection without the
ORM (resources.base.ReadQueries, auth.request.provide_read). They must keep every promise
of the ORM path: organization filter, RLS underneath, project restriction, refusals, and
a connection that goes back to the pool with no transaction and no context."""

import dataclasses
import hashlib
import uuid

import pytest
from litestar.exceptions import HTTPException

from tenant_api.auth.request import ReadTransaction
from tenant_api.db.context import BEGIN_REQUEST_SQL, Principal
from tenant_api.resources.agents import agents
from tenant_api.resources.base import ReadQueries, TenantService, resource_router
from tenant_api.routes import RESOURCES
from tests.conftest import bearer, make_token, signup


async def _agent(client, tenant, name: str, project_id: str | None = None, **extra) -> dict:
    r = await client.post("/v1/agents", headers=tenant.h,
                          json={"project_id": project_id or tenant.project_id, "name": name, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def test_get_and_list_stay_inside_the_organization(client):
    a, b = await signup(client), await signup(client)
    mine = await _agent(client, a, "mine")
    theirs = await _agent(client, b, "theirs")

    r = await client.get(f"/v1/agents/{mine['id']}", headers=a.h)
    assert r.status_code == 200 and r.json() == mine
    r = await client.get(f"/v1/agents/{theirs['id']}", headers=a.h)
    assert r.status_code == 404 and r.json()["detail"] == "agent not found"
    r = await client.get("/v1/agents", headers=a.h)
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["items"]] == [mine["id"]]


async def test_list_pages_with_cursor_and_filters(client):
    t = await signup(client)
    made = [await _agent(client, t, f"p{i}", status="paused" if i == 1 else "active") for i in range(3)]
    r = await client.get("/v1/agents", params={"limit": 2}, headers=t.h)
    assert r.status_code == 200
    page = r.json()
    assert [x["id"] for x in page["items"]] == [made[0]["id"], made[1]["id"]] and page["next_cursor"]
    r = await client.get("/v1/agents", params={"limit": 2, "cursor": page["next_cursor"]}, headers=t.h)
    assert [x["id"] for x in r.json()["items"]] == [made[2]["id"]] and r.json()["next_cursor"] is None
    r = await client.get("/v1/agents", params={"status": "paused"}, headers=t.h)
    assert [x["name"] for x in r.json()["items"]] == ["p1"]
    r = await client.get("/v1/agents", params={"project_id": t.project_id, "status": "active", "limit": 1}, headers=t.h)
    assert [x["name"] for x in r.json()["items"]] == ["p0"] and r.json()["next_cursor"]
    r = await client.get("/v1/agents", params={"cursor": "not a cursor!"}, headers=t.h)
    assert r.status_code == 422 and "cursor" in r.text


async def test_project_restriction_applies_on_reads(client):
    t = await signup(client)
    r = await client.post("/v1/projects", headers=t.h, json={"workspace_id": t.workspace_id, "name": "other"})
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
    assert (await client.delete(f"/v1/tokens/{revoked['id']}", headers=t.hs)).status_code == 204
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
        r = await client.get(f"/v1/agents/{uuid.uuid4()}", headers=t.h if i % 2 else bearer(no_scope["token"]))
        assert r.status_code in (403, 404)
    # The pool still serves ORM writes and reads, on connections with no open transaction.
    await _agent(client, t, "after")
    r = await client.get("/v1/agents", headers=t.h)
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


# Every resource's read path, as it states it (Resource.read_path). A change here moves a
# route on or off the hot path: it is a decision, made in review, never a side effect.
READ_PATHS = {
    "workspace": "fast", "project": "fast", "invite": "orm",
    "agent": "fast", "agent_template": "fast", "agent_email_rule": "orm", "agent_conversation": "fast",
    "video_call": "orm", "service": "fast", "device_token": "orm",
    "conversation": "fast", "conversation_member": "fast",
    "desktop_config": "fast", "desktop_vm": "fast", "robot_macro": "fast", "robot_macro_execution": "orm",
    "desktop_connection": "fast",
    "task": "fast", "computer_use_task": "fast", "job_schedule": "fast", "job": "fast",
}


def _mounted_read_path(res) -> str:
    """Which path the mounted list and get routes take: the fast ones read through ``tx``."""
    router = resource_router(dataclasses.replace(res, actions=[]))  # the generic routes only
    reads = [h for route in router.routes for h in getattr(route, "route_handlers", [])
             if h.operation_id == f"get_{res.name}" or str(h.operation_id).startswith("list_")]
    assert len(reads) == 2, [h.operation_id for h in reads]
    paths = {"fast" if "tx" in h.parsed_fn_signature.parameters else "orm" for h in reads}
    assert len(paths) == 1, paths
    return paths.pop()


def test_every_resource_states_its_read_path_and_is_mounted_on_it():
    assert {res.name: res.read_path for res in RESOURCES} == READ_PATHS
    assert {res.name: _mounted_read_path(res) for res in RESOURCES} == READ_PATHS


def test_a_fast_resource_whose_service_reads_on_its_own_refuses_to_mount():
    """Overriding page (or reading newest first) can no longer move a hot route to the ORM
    silently: the resource must say read_path="orm"."""

    class OwnPage(TenantService):
        async def page(self, *extra, limit, cursor, **filters):  # type: ignore[no-untyped-def]
            return await super().page(*extra, limit=limit, cursor=cursor, **filters)

    class NewestFirst(TenantService):
        newest_first = True

    for service in (OwnPage, NewestFirst):
        with pytest.raises(RuntimeError, match="read_path='orm'"):
            resource_router(dataclasses.replace(agents, service=service, actions=[]))
        assert _mounted_read_path(dataclasses.replace(agents, service=service, actions=[], read_path="orm")) == "orm"


def test_a_service_with_read_rules_of_its_own_keeps_the_orm_path():
    class Narrower(TenantService):
        async def get_visible(self, item_id, scope=None):  # type: ignore[no-untyped-def]
            return await super().get_visible(item_id, scope)

    assert ReadQueries.for_resource(agents, agents.service_class()) is not None
    assert ReadQueries.for_resource(agents, Narrower) is None


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
        r = await client.get(f"/v1/agents/{agent['id']}", headers=t.h)
        assert r.status_code == 200 and r.json()["id"] == agent["id"]
        r = await client.get("/v1/agents", headers=t.h)
        assert r.status_code == 200 and [x["id"] for x in r.json()["items"]] == [agent["id"]]
