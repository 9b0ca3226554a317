"""Isolation through the HTTP API, driven by the OpenAPI document: every route, every
method. A new route is covered without a new test, or fails with a message pointing at
tests/support/factories.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect

from tests.support import factories
from tests.support.tenants import bearer
from tests.support.security import (
    World,
    all_ids,
    assert_problem,
    build_world,
    fill_path,
    flatten,
    gen_body,
    openapi,
    operations,
    own_path,
    path_parameters,
    request_schema,
    row_ids,
    schema_type,
    snapshot,
    tenant_refs,
    uuids_in,
)


@pytest.fixture(scope="module")
async def world(client, module_admin) -> World:
    return await build_world(client, module_admin, "ihttp")


@pytest.fixture(scope="module")
def doc(client) -> dict[str, Any]:
    return openapi(client)


def credentials(world: World) -> dict[str, dict[str, str]]:
    """A's two kinds of credential: the all-scopes API token and the owner's session."""
    return {"api token": world.a.token_auth, "session": world.a.session_auth}


async def test_every_route_with_an_id_answers_404_for_another_organizations_rows(world, doc, client, module_admin):
    b = world.b
    refs_b = await tenant_refs(module_admin, b)
    before = await snapshot(module_admin, b.organization_id)
    checked = 0
    unmapped = []
    for method, template, op in operations(doc):
        params = path_parameters(op)
        if not params:
            continue
        mapping = factories.path_params(template)
        if mapping is None or set(params) - set(mapping):
            unmapped.append(f"{method} {template} {params}")
            continue
        # Each parameter walks B's rows of its table (oldest first, up to 5) in step; for
        # nested routes also one B row under A's own parents, and A's row under B's parents.
        b_rows = {p: await row_ids(module_admin, mapping[p], b.organization_id) for p in params}
        a_rows = {p: await row_ids(module_admin, mapping[p], world.a.organization_id) for p in params}
        for p in params:
            assert b_rows[p], f"{method} {template}: organization B has no {mapping[p]} row; add a ROW_FACTORIES entry"
            assert a_rows[p], f"{method} {template}: organization A has no {mapping[p]} row; add a ROW_FACTORIES entry"
        combos = [{p: ids[min(i, len(ids) - 1)] for p, ids in b_rows.items()}
                  for i in range(max(len(ids) for ids in b_rows.values()))]
        if len(params) > 1:
            combos.append({**{p: a_rows[p][0] for p in params[:-1]}, params[-1]: b_rows[params[-1]][0]})
            combos.append({**{p: b_rows[p][0] for p in params[:-1]}, params[-1]: a_rows[params[-1]][0]})
        schema = request_schema(doc, op)
        for values in combos:
            path = fill_path(template, values)
            body = None
            if schema is not None:
                body = gen_body(doc, schema, refs_b, uuid.uuid4().hex[:8], f"{method} {template}",
                                factories.BODY_OVERRIDES.get((method, template)))
            for label, headers in credentials(world).items():
                r = await client.request(method, path, headers=headers, json=body)
                assert_problem(r, 404)
                checked += 1
    assert not unmapped, (
        "routes whose path parameters the isolation test cannot map to rows of organization B: "
        f"{unmapped}; add them to PATH_PARAMS in tests/support/factories.py")
    assert checked >= 20, checked  # the walk found the routes (tokens, workspaces, projects, agents)
    assert await snapshot(module_admin, b.organization_id) == before, "organization B's rows changed"


async def test_reads_never_return_another_organizations_ids(world, doc, client, module_admin):
    b_ids = await all_ids(module_admin, world.b.organization_id)
    assert len(b_ids) > 10, b_ids
    refs_b = await tenant_refs(module_admin, world.b)
    before = await snapshot(module_admin, world.b.organization_id)
    checked = []
    for method, template, op in operations(doc):
        if method != "GET":
            continue
        if (method, template) in factories.STREAMS:
            # An event stream never ends: the buffering test client would wait forever on
            # A's own conversation. B's ids get their 404 in the test above; what a stream
            # delivers is tested through a real server (tests/support/factories.py, STREAMS).
            continue
        path = await own_path(module_admin, world.a, template, op)  # A's own rows in the path
        query = {p["name"]: p for p in op.get("parameters", []) if p.get("in") == "query"}
        params = {"limit": 200} if "limit" in query else {}
        for label, headers in credentials(world).items():
            seen: set[str] = set()
            pages, cursor = 0, None
            while True:
                r = await client.get(path, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
                assert r.status_code == 200, f"GET {template} ({label}): {r.status_code} {r.text}"
                body = r.json()
                seen |= uuids_in(body)
                pages += 1
                cursor = body.get("next_cursor") if isinstance(body, dict) else None
                if not cursor or pages > 50:
                    break
            if (method, template) in factories.ID_FREE_READS:
                assert not seen, (f"GET {template} ({label}) now returns ids {seen}: remove it from ID_FREE_READS "
                                  "in tests/support/factories.py, so they are checked")
            else:
                assert seen, f"GET {template} ({label}) returned no ids at all: the check would be vacuous"
            leaked = seen & b_ids
            assert not leaked, f"GET {template} ({label}) returned ids of organization B: {leaked}"
            checked.append(template)

            # Filters pointed at B's rows find nothing (and are not an error).
            for name, p in query.items():
                s = flatten(doc, p.get("schema", {}))
                if schema_type(s) != "string" or s.get("format") != "uuid":
                    continue
                table = factories.UUID_FIELDS.get(name)
                assert table in refs_b, (f"GET {template}: query parameter {name!r} is a UUID the test cannot map; "
                                         "add it to UUID_FIELDS in tests/support/factories.py")
                r = await client.get(path, headers=headers, params={name: refs_b[table]})
                assert r.status_code == 200, f"GET {template}?{name}=<B's>: {r.status_code} {r.text}"
                assert r.json()["items"] == [], f"GET {template}?{name}=<B's {table}> returned items"
                assert not uuids_in(r.json()) & b_ids
    assert {"/v1/agents", "/v1/tokens", "/v1/audit/events", "/v1/me"} <= set(checked), checked
    assert await snapshot(module_admin, world.b.organization_id) == before


def uuid_properties(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Body fields holding ids of other rows (a UUID, or an array of UUIDs)."""
    out = []
    for name, prop in schema.get("properties", {}).items():
        s = flatten(doc, prop)
        if schema_type(s) == "array":
            s = flatten(doc, s.get("items", {}))
        if schema_type(s) == "string" and s.get("format") == "uuid":
            out.append(name)
    return out


async def test_creates_cannot_reference_another_organizations_rows(world, doc, client, module_admin):
    """Every POST/PATCH/PUT whose body names other rows: pointing them at B's rows is a 4xx,
    never a row; naming organization_id in a body is refused."""
    refs_b = await tenant_refs(module_admin, world.b)
    refs_a = await tenant_refs(module_admin, world.a)
    snap_b = await snapshot(module_admin, world.b.organization_id)
    # A's own rows: every write leaves an audit row, so an unchanged count means no write.
    audit_a = "select count(*) from token_audit_log where organization_id = $1"
    writes_a = await module_admin.fetchval(audit_a, uuid.UUID(world.a.organization_id))
    checked = []
    for method, template, op in operations(doc):
        schema = request_schema(doc, op)
        if schema is None or (method, template) in factories.PUBLIC_OPERATIONS:
            continue
        path = await own_path(module_admin, world.a, template, op)
        overrides = factories.BODY_OVERRIDES.get((method, template))
        body = gen_body(doc, schema, refs_b, uuid.uuid4().hex[:8], f"{method} {template}", overrides)
        uuid_fields = uuid_properties(doc, schema)
        if uuid_fields:
            r = await client.request(method, path, headers=world.a.token_auth, json=body)
            assert 400 <= r.status_code < 500, f"{method} {path} with B's {uuid_fields}: {r.status_code} {r.text}"
            assert_problem(r, r.status_code)
            checked.append((method, template))
        r = await client.request(method, path, headers=world.a.token_auth,
                                 json={**gen_body(doc, schema, refs_a, uuid.uuid4().hex[:8], "", overrides),
                                       "organization_id": world.b.organization_id})
        assert_problem(r, 422)
    assert ("POST", "/v1/agents") in checked and ("POST", "/v1/projects") in checked, checked
    assert await snapshot(module_admin, world.b.organization_id) == snap_b
    assert await module_admin.fetchval(audit_a, uuid.UUID(world.a.organization_id)) == writes_a


async def test_every_non_public_route_needs_a_credential(doc, client):
    ops = operations(doc)
    documented = {(m, p) for m, p, _ in ops}
    assert factories.PUBLIC_OPERATIONS <= documented, factories.PUBLIC_OPERATIONS - documented
    checked = 0
    for method, template, op in ops:
        if (method, template) in factories.PUBLIC_OPERATIONS:
            continue
        path = fill_path(template, {p: str(uuid.uuid4()) for p in path_parameters(op)})
        body = {} if op.get("requestBody") else None
        for headers in ({}, bearer("garbage"), {"Authorization": "Basic dXNlcjpwYXNz"}):
            r = await client.request(method, path, headers=headers, json=body)
            assert_problem(r, 401)
            assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
        checked += 1
    assert checked >= 20, checked


def event_streams(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for m, p, op in operations(doc)
            if "text/event-stream" in op.get("responses", {}).get("200", {}).get("content", {})}


async def test_event_streams_are_declared(doc):
    """The walks above must not GET an event stream with a visible id (it never ends): the
    document's streams are exactly the ones tests/support/factories.py lists as such."""
    assert event_streams(doc) == factories.STREAMS, (
        f"event streams in the OpenAPI document {event_streams(doc)} != STREAMS in tests/support/factories.py "
        f"{factories.STREAMS}")
    assert set(factories.ID_FREE_READS) <= {(m, p) for m, p, _ in operations(doc)}, factories.ID_FREE_READS


async def test_every_route_is_documented_or_listed(doc, client):
    """A route missing from the OpenAPI document escapes every walk above: each must be
    listed in UNDOCUMENTED_ROUTES (tests/support/factories.py) with the test covering it."""
    routes = {factories.template(r.path) for r in client.app.routes}
    undocumented = {r for r in routes - set(doc["paths"]) if r != "/health" and not r.startswith("/docs")}
    assert undocumented == set(factories.UNDOCUMENTED_ROUTES), (
        f"routes outside the OpenAPI document: {sorted(undocumented)}; listed: {sorted(factories.UNDOCUMENTED_ROUTES)}")


async def ws_close_code(client, url: str, headers: dict[str, str]) -> int:
    with pytest.raises(WebSocketDisconnect) as refused:
        with await client.websocket_connect(url, headers=headers) as ws:
            ws.receive_json(timeout=5)
    return refused.value.code


async def test_websocket_refuses_anonymous_and_other_organizations_vms(world, client, module_admin):
    """The robot clients' WebSocket (outside the OpenAPI document): B's VMs are not found
    (4404) with either of A's credentials, and no credential is refused (4401); B's rows
    (connections included) stay as they were."""
    url = "/v1/desktop-connections/ws?vm_id={}"
    before = await snapshot(module_admin, world.b.organization_id)
    b_vms = await row_ids(module_admin, "desktop_virtual_machine", world.b.organization_id)
    assert b_vms
    for vm in b_vms:
        for label, headers in credentials(world).items():
            assert await ws_close_code(client, url.format(vm), headers) == 4404, (label, vm)
    a_vm = (await row_ids(module_admin, "desktop_virtual_machine", world.a.organization_id))[0]
    for headers in ({}, bearer("garbage")):
        assert await ws_close_code(client, url.format(a_vm), headers) == 4401
    assert await snapshot(module_admin, world.b.organization_id) == before


async def test_openapi_document_itself_is_public(client):
    r = await client.get("/docs/openapi.json")
    assert r.status_code == 200 and "/v1/agents" in r.json()["paths"]
