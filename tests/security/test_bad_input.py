"""Regression tests for the bad-input findings of issue 10, one per class: each answered
500 before. The generic sweep over every operation is tests/security/test_hostile_input.py."""

from __future__ import annotations

import logging
import time
import uuid

import jwt
import pytest

from tenant_api.auth.credentials import new_api_token
from tenant_api.inputs import TIMESTAMP_EXAMPLE
from tests.support.tenants import bearer, make_token
from tests.support.members_flow import join, new_project
from tests.support.security import PROBLEM, assert_problem, flatten, openapi, operations, request_schema, schema_type

DEEP = 5000


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


async def test_deep_json_is_400_with_and_without_a_credential(client, tenant, caplog):
    caplog.set_level(logging.DEBUG)
    body = '{"email": ' + nested(DEEP) + "}"
    forged = bearer(new_api_token())  # passes the checksum: only the database can refuse it
    cases = [("POST", "/v1/auth/login", {}), ("POST", "/v1/auth/signup", {}),
             ("POST", "/v1/agents", tenant.token_auth), ("POST", "/v1/agents", forged), ("PATCH", "/v1/organization", tenant.session_auth),
             ("PUT", "/v1/trial", forged)]
    started = time.monotonic()
    for method, path, headers in cases * 20:
        r = await client.request(method, path, content=body, headers={**headers, "Content-Type": "application/json"})
        assert r.status_code in (400, 401), (method, path, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith(PROBLEM)
        if r.status_code == 400:
            assert "nested deeper than" in r.json()["detail"]
    assert time.monotonic() - started < 30
    # Refused garbage writes no traceback, and little log at all.
    assert not [rec for rec in caplog.records if rec.exc_info], [rec.getMessage() for rec in caplog.records][:3]
    assert sum(len(rec.getMessage()) for rec in caplog.records if rec.name.startswith("tenant_api")) < 20_000


async def test_deeply_nested_websocket_frame_gets_an_error_and_the_socket_lives(client, tenant):
    vm = (await client.post("/v1/desktop-configs", headers=tenant.token_auth, json={
        "project_id": tenant.project_id, "name": f"c{uuid.uuid4().hex[:6]}", "image": "img"})).json()
    vm = (await client.post("/v1/desktop-vms", headers=tenant.token_auth, json={"config_id": vm["id"], "name": "vm"})).json()
    with await client.websocket_connect(f"/v1/desktop-connections/ws?vm_id={vm['id']}", headers=tenant.token_auth) as ws:
        assert ws.receive_json(timeout=5)["type"] == "connected"
        ws.send_text(nested(DEEP))
        error = ws.receive_json(timeout=5)
        assert error["type"] == "error" and "nested deeper" in error["detail"]
        ws.send_text('{"type":' + nested(DEEP, "{\"a\":", "}") + "}")
        assert ws.receive_json(timeout=5)["type"] == "error"
        ws.send_json({"type": "ping"})
        assert ws.receive_json(timeout=5) == {"type": "pong"}


async def test_integers_beyond_their_column_are_422(client, tenant):
    conversation = (await client.post("/v1/conversations", headers=tenant.token_auth, json={
        "project_id": tenant.project_id, "kind": "CHANNEL", "name": f"c{uuid.uuid4().hex[:6]}"})).json()
    job = (await client.post("/v1/jobs", headers=tenant.token_auth, json={
        "project_id": tenant.project_id, "target": {"kind": "command", "ref": "echo"}})).json()
    messages = f"/v1/conversations/{conversation['id']}/messages"
    # 2^31 was refused by the driver as an int4: seq is bigint, so it is a valid cursor now
    for params in ({"before": 2**31}, {"after": 2**31}, {"after": 2**63 - 1}):
        r = await client.get(messages, headers=tenant.token_auth, params=params)
        assert r.status_code == 200 and r.json()["items"] == [], (params, r.text)
    for params in ({"before": 2**63}, {"after": 2**63}, {"after": -1}, {"before": -(2**63) - 1}):
        r = await client.get(messages, headers=tenant.token_auth, params=params)
        body = assert_problem(r, 422)
        assert next(iter(params)) in body["detail"], body
    r = await client.get(f"/v1/jobs/{job['id']}/logs", headers=tenant.token_auth, params={"after": 2**63})
    assert "after" in assert_problem(r, 422)["detail"]
    r = await client.get(f"/v1/conversations/{conversation['id']}/stream", headers={**tenant.token_auth, "Last-Event-ID": str(2**63)})
    assert_problem(r, 422)
    # OpenAPI shows the bounds
    doc = client.app.openapi_schema.to_schema()
    params = {p["name"]: p for p in doc["paths"]["/v1/conversations/{conversation_id}/messages"]["get"]["parameters"]}
    assert params["before"]["schema"]["maximum"] == 2**63 - 1


OUT_OF_RANGE = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


@pytest.mark.parametrize("value", [*OUT_OF_RANGE, "2030-01-01T00:00:00", "not a time",
                                   # the driver's -infinity and infinity
                                   "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"])
async def test_times_outside_the_range_or_without_a_zone_are_422_naming_the_field(client, tenant, value):
    checks = [
        ("GET", "/v1/audit/events", {"params": {"since": value}}, "since"),
        ("GET", "/v1/audit/usage", {"params": {"until": value}}, "until"),
        ("GET", "/v1/audit/verify", {"params": {"since": value}}, "since"),
        ("PUT", "/v1/trial", {"json": {"plan": "pro", "ends_at": value}}, "ends_at"),
        ("POST", "/v1/video-calls", {"json": {"project_id": tenant.project_id, "started_at": value}}, "started_at"),
        ("POST", "/v1/tokens", {"json": {"name": "x", "scopes": ["agents:read"], "expires_at": value}}, "expires_at"),
    ]
    for method, path, kwargs, field in checks:
        r = await client.request(method, path, headers=tenant.token_auth, **kwargs)
        body = assert_problem(r, 422)
        assert field in body["detail"] and body["errors"][0]["field"] == field, (path, body)


async def test_extreme_but_valid_times_work(client, tenant):
    r = await client.get("/v1/audit/events", headers=tenant.token_auth, params={"since": "0001-01-01T00:00:01Z",
                                                                  "until": "9999-12-31T23:59:59Z"})
    assert r.status_code == 200, r.text
    r = await client.get("/v1/audit/verify", headers=tenant.token_auth, params={"since": "0001-01-01T00:00:00-14:00"})
    assert r.status_code == 200, r.text


async def test_project_restricted_credential_cannot_change_organization_rows(client, tenant):
    project = await new_project(client, tenant)
    restricted = await make_token(client, tenant, ["org:write", "tokens:write", "members:write"],
                                  project_ids=[project["id"]])
    r = await client.patch("/v1/organization", headers=bearer(restricted["token"]), json={"name": "taken over"})
    assert r.status_code in (403, 404), r.text
    assert_problem(r, r.status_code)
    r = await client.get("/v1/organization", headers=tenant.token_auth)
    assert r.json()["name"] != "taken over"

    # another user's token, seen through a project restriction
    from tests.support.tenants import signup
    member = await signup(client)
    member_session = await join(client, tenant, member, project["id"])
    tokens = (await client.get("/v1/tokens", headers=tenant.token_auth, params={"user_id": member.user_id})).json()["items"]
    assert tokens
    for token in tokens:
        r = await client.delete(f"/v1/tokens/{token['id']}", headers=bearer(restricted["token"]))
        assert r.status_code in (403, 404), r.text
        assert_problem(r, r.status_code)
    assert (await client.get("/v1/me", headers=member_session)).status_code == 200  # not revoked


def _session_jwt(client, **claims) -> str:
    settings = client.app.state.settings
    now = int(time.time())
    body = {"iss": settings.auth.jwt_issuer, "sub": str(uuid.uuid4()), "sid": str(uuid.uuid4()),
            "org": str(uuid.uuid4()), "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, settings.auth.jwt_secret, algorithm="HS256")


@pytest.mark.parametrize("claims", [
    {"sid": 12345}, {"org": [str(uuid.uuid4())]}, {"sub": {"a": 1}}, {"sid": None}, {"org": "not-a-uuid"},
    {"sid": ["x"]}, {"iat": "yesterday"}, {"exp": [1]}, {"nbf": {"a": 1}},
])
async def test_session_claims_of_the_wrong_type_are_401(client, claims):
    token = _session_jwt(client, **claims)
    r = await client.get("/v1/me", headers=bearer(token))
    assert_problem(r, 401)
    # expired, too (the path that attributes an expired session to its organization)
    token = _session_jwt(client, **claims, exp=int(time.time()) - 60) if "exp" not in claims else token
    assert_problem(await client.get("/v1/me", headers=bearer(token)), 401)


def _request_fields(doc: dict, schema: dict, where: str, depth: int = 0):
    """(where, flattened schema) of every field of a request body, nested objects and array items too."""
    s = flatten(doc, schema)
    yield where, s
    if depth > 5:
        return
    for name, prop in s.get("properties", {}).items():
        yield from _request_fields(doc, prop, f"{where}.{name}", depth + 1)
    if "items" in s:
        yield from _request_fields(doc, s["items"], f"{where}[]", depth + 1)


def test_every_request_integer_is_bounded_and_every_time_is_a_timestamp(client):
    """The class fixes, kept for routes still to come: integers carry their column's bounds
    (OpenAPI shows them; the driver never meets one it cannot encode), date-times are the
    shared Timestamp type (zone required, range checked). Add bounds with inputs.Int32/
    Int64 (or ge/le), and annotate times as inputs.Timestamp."""
    doc = openapi(client)
    unbounded, plain_times = [], []
    for method, path, op in operations(doc):
        fields = [(f"{method} {path} {p['in']} {p['name']}", p.get("schema", {})) for p in op.get("parameters", [])]
        schema = request_schema(doc, op)
        if schema is not None:
            fields += list(_request_fields(doc, schema, f"{method} {path} body"))
        for where, s in fields:
            s = flatten(doc, s)
            # (Only the maximum: Litestar drops a minimum of 0 from the document, though it
            # enforces it. Every lower bound of ours is 0 or set with the maximum.)
            if schema_type(s) == "integer" and "maximum" not in s and "exclusiveMaximum" not in s:
                unbounded.append(where)
            if s.get("format") == "date-time" and TIMESTAMP_EXAMPLE not in (s.get("examples") or []):
                plain_times.append(where)
    assert not unbounded, f"integers without bounds: {unbounded}"
    assert not plain_times, f"date-times not typed inputs.Timestamp: {plain_times}"


async def test_a_missing_or_unknown_field_is_named_itself(client, tenant):
    """msgspec reports a missing or an unknown field at the object around it ("data", the
    body, or "steps[0]"); the problem names the field the client has to fix."""
    cases = [
        ("/v1/agents", {"project_id": tenant.project_id}, "name", "missing required field"),
        ("/v1/agents", {"project_id": tenant.project_id, "name": "x", "colour": "red"}, "colour", "unknown field"),
        ("/v1/tasks", {"project_id": tenant.project_id, "summary": "s", "steps": [{"title": "a", "x": 1}]},
         "steps[0].x", "unknown field"),
    ]
    for path, body, field, words in cases:
        r = await client.post(path, headers=tenant.token_auth, json=body)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        [error] = r.json()["errors"]
        assert error["field"] == field and words in error["message"], (path, error)
        assert r.json()["detail"].startswith(f"{field}: ")
