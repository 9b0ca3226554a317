"""Desktops: configs, VMs (state machine), robot macros and executions, and the robot
clients' WebSocket with its desktop_connection bookkeeping and reaper."""

import asyncio
import time
import uuid
from typing import Any

import pytest
from litestar import Litestar, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient

from tenant_api.app import _check_route_security, create_app
from tenant_api.auth.credentials import new_api_token
from tests.support.tenants import Tenant, bearer, make_token, signup
from tests.support.windows import inside_one_window
from tests.support.rows import insert_connection, make_config, make_vm

U = uuid.UUID


# --- helpers --------------------------------------------------------------------------

# Signing up hashes passwords (argon2): two organizations for the whole module. Tests
# create their own configs, VMs and macros, and look only at those.
@pytest.fixture(scope="module")
async def other(client) -> Tenant:
    return await signup(client)


async def make_project(client, tenant: Tenant) -> str:
    r = await client.post("/v1/projects", headers=tenant.token_auth, json={"workspace_id": tenant.workspace_id,
                                                              "name": f"p-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def make_macro(client, tenant: Tenant, **extra: Any) -> dict:
    body = {"project_id": tenant.project_id, "name": f"m-{uuid.uuid4().hex[:8]}", **extra}
    r = await client.post("/v1/robot-macros", headers=tenant.token_auth, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def poll(fetch, until, timeout: float = 5.0) -> Any:
    """Re-run ``fetch`` until ``until(value)``: the socket handler finishes in the app's thread."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if until(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def connection_rows(admin_conn, vm_id: str) -> list:
    return await admin_conn.fetch("select * from desktop_connection where vm_id = $1 order by id", U(vm_id))


async def refused(client, url: str, headers: dict | None = None) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as exc:
        with await client.websocket_connect(url, headers=headers) as ws:
            ws.receive_json(timeout=5)
    return exc.value


def ws_url(vm_id: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"vm_id": vm_id, **params}.items())
    return f"/v1/desktop-connections/ws?{query}"


async def reap(conn, instance: str | None = None, stale: str = "120 seconds") -> int:
    """The reaper exactly as the API runs it: the definer function, as the API process's
    background login (tenant_api_jobs: the ``jobs_conn`` fixture), no context."""
    return await conn.fetchval("select auth.reap_desktop_connections($1::text::interval, $2)", stale, instance)


# --- desktop_configs ------------------------------------------------------------------

async def test_config_validation_unique_name_and_delete_guard(client, admin_conn, tenant):
    config = await make_config(client, tenant, name="standard")
    assert (config["cpu"], config["memory_mb"], config["disk_gb"], config["settings"]) == (2, 4096, 40, {})

    for field, value in [("cpu", 0), ("cpu", 65), ("memory_mb", 256), ("disk_gb", 5000), ("image", "")]:
        r = await client.post("/v1/desktop-configs", headers=tenant.token_auth,
                              json={"project_id": tenant.project_id, "name": "x", "image": "img", field: value})
        assert r.status_code == 422 and field in r.text, (field, r.text)
    r = await client.post("/v1/desktop-configs", headers=tenant.token_auth, json={"project_id": tenant.project_id, "name": "x",
                                                                  "image": "i", "settings": {"k": "v" * 70000}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "settings"

    r = await client.post("/v1/desktop-configs", headers=tenant.token_auth,
                          json={"project_id": tenant.project_id, "name": "standard", "image": "other"})
    assert r.status_code == 409, r.text
    # unique per project, not per organization
    p2 = await make_project(client, tenant)
    r = await client.post("/v1/desktop-configs", headers=tenant.token_auth, json={"project_id": p2, "name": "standard", "image": "i"})
    assert r.status_code == 201, r.text

    r = await client.patch(f"/v1/desktop-configs/{config['id']}", headers=tenant.token_auth,
                           json={"cpu": 8, "settings": {"resolution": "1920x1080"}})
    assert r.status_code == 200 and r.json()["cpu"] == 8 and r.json()["settings"] == {"resolution": "1920x1080"}
    r = await client.patch(f"/v1/desktop-configs/{config['id']}", headers=tenant.token_auth, json={"project_id": p2})
    assert r.status_code == 422  # a config never moves to another project

    r = await client.post("/v1/desktop-vms", headers=tenant.token_auth, json={"config_id": config["id"], "name": "vm"})
    assert r.status_code == 201
    assert r.json()["project_id"] == tenant.project_id  # the VM's project is its config's
    r = await client.delete(f"/v1/desktop-configs/{config['id']}", headers=tenant.token_auth)
    assert r.status_code == 409, r.text  # in use by a VM
    assert await admin_conn.fetchval("select count(*) from desktop_configs where id = $1", U(config["id"])) == 1


# --- desktop_virtual_machine ----------------------------------------------------------

async def test_vm_state_machine(client, tenant):
    vm = await make_vm(client, tenant, status="provisioning")
    path = f"/v1/desktop-vms/{vm['id']}"
    assert vm["status"] == "provisioning"

    r = await client.patch(path, headers=tenant.token_auth, json={"status": "stopped"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert "provisioning" in body["detail"] and "stopped" in body["detail"]
    assert (body["from"], body["to"]) == ("provisioning", "stopped")

    steps = [("start", "running"), ("stop", "stopped"), ("start", "running"), ("stop", "stopped"),
             ("terminate", "terminated")]
    for action, status in steps:
        r = await client.post(f"{path}/{action}", headers=tenant.token_auth)
        assert r.status_code == 200 and r.json()["status"] == status, (action, r.text)
    for action, target in [("start", "running"), ("stop", "stopped")]:
        r = await client.post(f"{path}/{action}", headers=tenant.token_auth)
        assert r.status_code == 409 and "terminated" in r.json()["detail"] and target in r.json()["detail"]
    r = await client.post(f"{path}/terminate", headers=tenant.token_auth)
    assert r.status_code == 200  # already there: a retry is harmless

    failed = await make_vm(client, tenant, status="provisioning")
    r = await client.patch(f"/v1/desktop-vms/{failed['id']}", headers=tenant.token_auth, json={"status": "failed"})
    assert r.status_code == 200 and r.json()["status"] == "failed"
    r = await client.patch(f"/v1/desktop-vms/{failed['id']}", headers=tenant.token_auth, json={"status": "running"})
    assert r.status_code == 409 and "failed" in r.json()["detail"]
    r = await client.patch(f"/v1/desktop-vms/{failed['id']}", headers=tenant.token_auth, json={"status": "bogus"})
    assert r.status_code == 422

    running = await make_vm(client, tenant)
    r = await client.patch(f"/v1/desktop-vms/{running['id']}", headers=tenant.token_auth, json={"status": "provisioning"})
    assert r.status_code == 409
    r = await client.delete(f"/v1/desktop-vms/{running['id']}", headers=tenant.token_auth)
    assert r.status_code == 409 and "running" in r.json()["detail"]
    for gone in (vm, failed):
        r = await client.delete(f"/v1/desktop-vms/{gone['id']}", headers=tenant.token_auth)
        assert r.status_code == 204, r.text

    r = await client.get("/v1/desktop-vms", headers=tenant.token_auth, params={"status": "running", "limit": 200})
    ids = {v["id"] for v in r.json()["items"]}
    assert running["id"] in ids and failed["id"] not in ids


async def test_vm_host_and_ip(client, tenant):
    vm = await make_vm(client, tenant)
    path = f"/v1/desktop-vms/{vm['id']}"
    r = await client.patch(path, headers=tenant.token_auth, json={"host": "node-7", "ip_address": "2001:DB8::1"})
    assert r.status_code == 200 and (r.json()["host"], r.json()["ip_address"]) == ("node-7", "2001:db8::1")
    r = await client.patch(path, headers=tenant.token_auth, json={"ip_address": "10.0.0.300"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "ip_address"
    r = await client.patch(path, headers=tenant.token_auth, json={"ip_address": None})
    assert r.status_code == 200 and r.json()["ip_address"] is None


# --- robot_macro ------------------------------------------------------------------------

async def test_macro_steps_and_vm_binding(client, tenant):
    steps = [{"action": "click", "params": {"x": 10, "y": 20}}, {"action": "type", "params": {"text": "hi"}},
             {"action": "wait"}]
    macro = await make_macro(client, tenant, name="login", steps=steps)
    assert macro["steps"] == [*steps[:2], {"action": "wait", "params": {}}]  # order kept, params defaulted
    assert macro["vm_id"] is None

    bad_steps = [{"params": {}}, {"action": "Click!"}, {"action": "click", "extra": 1}, {"action": "x", "params": []},
                 "click"]
    for bad in bad_steps:
        r = await client.post("/v1/robot-macros", headers=tenant.token_auth,
                              json={"project_id": tenant.project_id, "name": "bad", "steps": [bad]})
        assert r.status_code == 422 and "steps" in r.text, (bad, r.text)
    r = await client.post("/v1/robot-macros", headers=tenant.token_auth, json={"project_id": tenant.project_id, "name": "login"})
    assert r.status_code == 409

    vm = await make_vm(client, tenant)
    r = await client.patch(f"/v1/robot-macros/{macro['id']}", headers=tenant.token_auth, json={"vm_id": vm["id"]})
    assert r.status_code == 200 and r.json()["vm_id"] == vm["id"]
    r = await client.patch(f"/v1/robot-macros/{macro['id']}", headers=tenant.token_auth, json={"vm_id": None})
    assert r.status_code == 200 and r.json()["vm_id"] is None

    # a VM of another project of the same organization
    p2 = await make_project(client, tenant)
    r = await client.post("/v1/desktop-configs", headers=tenant.token_auth, json={"project_id": p2, "name": "c", "image": "i"})
    r = await client.post("/v1/desktop-vms", headers=tenant.token_auth, json={"config_id": r.json()["id"], "name": "vm2"})
    r = await client.patch(f"/v1/robot-macros/{macro['id']}", headers=tenant.token_auth, json={"vm_id": r.json()["id"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "vm_id"


# --- robot_macro_execution --------------------------------------------------------------

async def test_executions_lifecycle_and_history(client, admin_conn, tenant):
    vm = await make_vm(client, tenant)
    macro = await make_macro(client, tenant, steps=[{"action": "click"}])
    base = f"/v1/robot-macros/{macro['id']}/executions"

    r = await client.post(base, headers=tenant.token_auth, json={})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "vm_id"  # unbound macro, no vm_id
    stopped = await make_vm(client, tenant, status="provisioning")
    r = await client.post(base, headers=tenant.token_auth, json={"vm_id": stopped["id"]})
    assert r.status_code == 409 and "provisioning" in r.json()["detail"]

    r = await client.patch(f"/v1/robot-macros/{macro['id']}", headers=tenant.token_auth, json={"vm_id": vm["id"]})
    r = await client.post(base, headers=tenant.token_auth, json={})  # defaults to the macro's VM
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["status"], first["vm_id"], first["started_at"], first["finished_at"], first["duration_ms"]) == (
        "queued", vm["id"], None, None, None)

    # The VM's robot claims it, reports progress, finishes it (the protocol: tests/areas/test_runners.py);
    # a PATCH only cancels.
    for body in ({"status": "running"}, {"status": "succeeded"}, {"output": "x"}):
        r = await client.patch(f"{base}/{first['id']}", headers=tenant.token_auth, json=body)
        assert r.status_code == 422, (body, r.text)
    r = await client.post("/v1/robot-macro-executions/claim", headers=tenant.token_auth, json={"vm_ids": [vm["id"]]})
    assert r.status_code == 200, r.text
    claim = r.json()
    assert claim["execution"]["id"] == first["id"] and claim["execution"]["status"] == "running"
    secret = claim["claim_secret"]
    r = await client.post(f"/v1/robot-macro-executions/{first['id']}/heartbeat", headers=tenant.token_auth,
                          json={"claim_secret": secret, "progress": {"percent": 50, "message": "step 1"}})
    assert r.status_code == 200 and r.json()["progress"] == {"percent": 50, "message": "step 1"}
    finish = f"/v1/robot-macro-executions/{first['id']}/finish"
    r = await client.post(finish, headers=tenant.token_auth, json={"claim_secret": secret, "exit_code": 0, "output": "x" * 70000})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "output"
    r = await client.post(finish, headers=tenant.token_auth, json={"claim_secret": secret, "exit_code": 0, "output": "done"})
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "succeeded" and done["output"] == "done" and done["finished_at"] is not None
    started, finished = await admin_conn.fetchrow(
        "select started_at, finished_at from robot_macro_execution where id = $1", U(first["id"]))
    assert done["duration_ms"] == round((finished - started).total_seconds() * 1000)

    r = await client.patch(f"{base}/{first['id']}", headers=tenant.token_auth, json={"status": "cancelled"})
    assert r.status_code == 409 and "succeeded" in r.json()["detail"] and "cancelled" in r.json()["detail"]
    r = await client.post(finish, headers=tenant.token_auth, json={"claim_secret": secret, "error": "again"})
    assert r.status_code == 409  # finished once
    r = await client.patch(f"{base}/{first['id']}", headers=tenant.token_auth, json={"duration_ms": 5})
    assert r.status_code == 422  # derived, never written

    second = (await client.post(base, headers=tenant.token_auth, json={})).json()
    r = await client.patch(f"{base}/{second['id']}", headers=tenant.token_auth, json={"status": "cancelled"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    third = (await client.post(base, headers=tenant.token_auth, json={"vm_id": vm["id"]})).json()

    r = await client.get(base, headers=tenant.token_auth)
    assert [e["id"] for e in r.json()["items"]] == [third["id"], second["id"], first["id"]]  # newest first
    r = await client.get(base, headers=tenant.token_auth, params={"limit": 2})
    page = r.json()
    r = await client.get(base, headers=tenant.token_auth, params={"limit": 2, "cursor": page["next_cursor"]})
    assert [e["id"] for e in page["items"] + r.json()["items"]] == [third["id"], second["id"], first["id"]]
    r = await client.get(base, headers=tenant.token_auth, params={"status": "queued"})
    assert [e["id"] for e in r.json()["items"]] == [third["id"]]

    other = await make_macro(client, tenant)
    r = await client.get(f"/v1/robot-macros/{other['id']}/executions/{first['id']}", headers=tenant.token_auth)
    assert r.status_code == 404  # an execution is reached through its own macro only
    r = await client.delete(f"{base}/{first['id']}", headers=tenant.token_auth)
    assert r.status_code in (404, 405)  # history is not deleted one by one

    r = await client.delete(f"/v1/robot-macros/{macro['id']}", headers=tenant.token_auth)
    assert r.status_code == 204
    assert await admin_conn.fetchval("select count(*) from robot_macro_execution where macro_id = $1",
                                     U(macro["id"])) == 0


# --- desktop_connection: the WebSocket --------------------------------------------------

async def test_connect_ping_and_clean_disconnect(client, admin_conn, tenant):
    vm = await make_vm(client, tenant)
    with await client.websocket_connect(ws_url(vm["id"]), headers=tenant.token_auth) as ws:
        hello = ws.receive_json(timeout=5)
        assert hello["type"] == "connected" and hello["ping_interval"] > 0
        rows = await connection_rows(admin_conn, vm["id"])
        assert len(rows) == 1
        row = rows[0]
        assert str(row["id"]) == hello["connection_id"]
        assert (row["status"], str(row["token_id"]), str(row["project_id"]), row["disconnected_at"]) == (
            "connected", tenant.token_id, tenant.project_id, None)
        assert row["api_instance_id"] == client.app.state.desktop_instance_id
        ws.send_json({"type": "ping"})
        assert ws.receive_json(timeout=5) == {"type": "pong"}
        ws.send_text("not json")
        assert ws.receive_json(timeout=5)["type"] == "error"  # and the socket stays open
        ws.send_json({"type": "ping"})
        assert ws.receive_json(timeout=5) == {"type": "pong"}

        r = await client.get("/v1/desktop-connections", headers=tenant.token_auth, params={"vm_id": vm["id"], "status": "connected"})
        assert [c["id"] for c in r.json()["items"]] == [hello["connection_id"]]
        # last_seen_at is written at most every touch_interval (15 s by default): not on each ping
        seen = await admin_conn.fetchval("select last_seen_at from desktop_connection where id = $1", row["id"])
        assert seen == row["last_seen_at"]

    rows = await poll(lambda: connection_rows(admin_conn, vm["id"]), lambda rs: rs[0]["status"] == "disconnected")
    closed = rows[0]
    assert (closed["status"], closed["close_reason"]) == ("disconnected", "client_closed")
    assert closed["disconnected_at"] >= closed["connected_at"]
    r = await client.get(f"/v1/desktop-connections/{closed['id']}", headers=tenant.token_auth)
    assert r.status_code == 200 and r.json()["status"] == "disconnected"

    audit = await admin_conn.fetch(
        "select action, token_id::text, request_id, changes from token_audit_log where row_id = $1 order by id",
        closed["id"])
    assert [(a["action"], a["token_id"]) for a in audit] == [("INSERT", tenant.token_id), ("UPDATE", tenant.token_id)]
    assert audit[0]["request_id"] and audit[0]["request_id"] == audit[1]["request_id"]  # one socket, one request id


async def test_connect_with_the_credential_as_a_subprotocol(client, admin_conn, tenant):
    """Browsers cannot set Authorization on a WebSocket: the credential travels as a
    subprotocol, never in the URL (which handshake and access logs keep)."""
    vm = await make_vm(client, tenant)
    token = await make_token(client, tenant, ["desktops:write"])
    offered = ["tenant-api.v1", f"bearer.{token['token']}"]
    with await client.websocket_connect(ws_url(vm["id"]), subprotocols=offered) as ws:
        assert ws.receive_json(timeout=5)["type"] == "connected"
        assert ws.accepted_subprotocol == "tenant-api.v1"  # the credential is never echoed
    rows = await connection_rows(admin_conn, vm["id"])
    assert [str(r["token_id"]) for r in rows] == [token["id"]]

    # A session JWT works the same way.
    with await client.websocket_connect(ws_url(vm["id"]), subprotocols=["tenant-api.v1", f"bearer.{tenant.session}"]) as ws:
        assert ws.receive_json(timeout=5)["type"] == "connected"


async def test_a_credential_in_the_url_is_refused(client, tenant):
    """?access_token= is gone: a URL credential is not read (4401 for want of one)."""
    vm = await make_vm(client, tenant)
    e = await refused(client, ws_url(vm["id"], access_token=tenant.token), {})
    assert e.code == 4401


async def test_an_address_refused_too_often_is_closed_with_4429_before_any_lookup(client, settings, tenant):
    """The refused-credential guard covers robot sockets too (ops.ratelimit.RefusedCredentials):
    past the address's refusals per minute an unknown credential is closed with 4429
    (readable by a browser client) before it is parsed or looked up, while a credential
    this process has seen accepted (on an HTTP request) still connects from the same
    address. Before the database's refusals on sockets were counted, an address could
    try credentials over WebSockets without limit, a lookup each."""
    vm = await make_vm(client, tenant)
    await inside_one_window(15)
    async with AsyncTestClient(create_app(settings.with_rate_limit(refused_per_minute=2))) as c:
        assert (await c.get("/v1/me", headers=tenant.token_auth)).status_code == 200  # seen accepted
        for _ in range(2):
            assert (await refused(c, ws_url(vm["id"]), bearer(new_api_token()))).code == 4401
        e = await refused(c, ws_url(vm["id"]), bearer(new_api_token()))
        assert e.code == 4429 and "too many refused credentials" in e.detail
        with await c.websocket_connect(ws_url(vm["id"]), headers=tenant.token_auth) as ws:
            assert ws.receive_json(timeout=5)["type"] == "connected"


async def test_refused_connections(client, admin_conn, tenant, other):
    vm, other_vm = await make_vm(client, tenant), await make_vm(client, other)

    read_only = await make_token(client, tenant, ["desktops:read"])
    e = await refused(client, ws_url(vm["id"]), bearer(read_only["token"]))
    assert e.code == 4403 and "desktops:write" in e.detail

    e = await refused(client, ws_url(other_vm["id"]), tenant.token_auth)  # another organization's VM
    assert e.code == 4404
    e = await refused(client, ws_url(str(uuid.uuid4())), tenant.token_auth)
    assert e.code == 4404

    # a token restricted to another project does not see this project's VM
    restricted = await make_token(client, tenant, ["desktops:write"], project_ids=[await make_project(client, tenant)])
    e = await refused(client, ws_url(vm["id"]), bearer(restricted["token"]))
    assert e.code == 4404

    revoked = await make_token(client, tenant, ["desktops:write"])
    assert (await client.delete(f"/v1/tokens/{revoked['id']}", headers=tenant.session_auth)).status_code == 204
    e = await refused(client, ws_url(vm["id"]), bearer(revoked["token"]))
    assert e.code == 4401 and "revoked" in e.detail
    e = await refused(client, ws_url(vm["id"]), bearer("tapi_" + "x" * 38))  # malformed, refused before the DB
    assert e.code == 4401
    e = await refused(client, ws_url(vm["id"]))  # no credential at all
    assert e.code == 4401

    e = await refused(client, "/v1/desktop-connections/ws", tenant.token_auth)
    assert e.code == 4400 and "vm_id" in e.detail
    e = await refused(client, ws_url("nope"), tenant.token_auth)
    assert e.code == 4400
    await client.post(f"/v1/desktop-vms/{vm['id']}/terminate", headers=tenant.token_auth)
    e = await refused(client, ws_url(vm["id"]), tenant.token_auth)
    assert e.code == 4409 and "terminated" in e.detail

    assert await connection_rows(admin_conn, vm["id"]) == []
    assert await connection_rows(admin_conn, other_vm["id"]) == []


@pytest.fixture(scope="module")
async def fast_client(settings):
    """An app whose heartbeat is written on every message and whose idle timeout is short."""
    app = create_app(settings.with_desktops(touch_interval_seconds=0, idle_timeout_seconds=0.5))
    async with AsyncTestClient(app) as c:
        yield c


async def test_heartbeat_writes_last_seen_without_audit_rows(fast_client, admin_conn, tenant):
    vm = await make_vm(fast_client, tenant)
    with await fast_client.websocket_connect(ws_url(vm["id"]), headers=tenant.token_auth) as ws:
        connection_id = U(ws.receive_json(timeout=5)["connection_id"])
        await admin_conn.execute("update desktop_connection set last_seen_at = now() - interval '10 minutes'"
                                 " where id = $1", connection_id)
        ws.send_json({"type": "ping"})
        assert ws.receive_json(timeout=5) == {"type": "pong"}
        age = await admin_conn.fetchval("select now() - last_seen_at from desktop_connection where id = $1",
                                        connection_id)
        assert age.total_seconds() < 5
        actions = await admin_conn.fetch("select action from token_audit_log where row_id = $1", connection_id)
        assert [a["action"] for a in actions] == ["INSERT"]  # heartbeats are noise, not history


async def test_idle_socket_is_closed_and_its_row_too(fast_client, admin_conn, tenant):
    vm = await make_vm(fast_client, tenant)
    with await fast_client.websocket_connect(ws_url(vm["id"]), headers=tenant.token_auth) as ws:
        ws.receive_json(timeout=5)
        with pytest.raises(WebSocketDisconnect) as exc:
            ws.receive_json(timeout=5)  # we send nothing: closed after idle_timeout (0.5 s)
        assert exc.value.code == 4408
    rows = await poll(lambda: connection_rows(admin_conn, vm["id"]), lambda rs: rs[0]["status"] == "disconnected")
    assert (rows[0]["status"], rows[0]["close_reason"]) == ("disconnected", "idle_timeout")


async def test_revoked_token_is_dropped_at_next_heartbeat_and_reaped(fast_client, admin_conn, jobs_conn, tenant):
    vm = await make_vm(fast_client, tenant)
    token = await make_token(fast_client, tenant, ["desktops:write"])
    with await fast_client.websocket_connect(ws_url(vm["id"]), headers=bearer(token["token"])) as ws:
        ws.receive_json(timeout=5)
        assert (await fast_client.delete(f"/v1/tokens/{token['id']}", headers=tenant.session_auth)).status_code == 204
        ws.send_json({"type": "ping"})
        with pytest.raises(WebSocketDisconnect) as exc:
            ws.receive_json(timeout=5)
        assert exc.value.code == 4401
    # The revoked credential cannot close its own row (no "credential_refused" close by
    # the handler); a reaper does, attributed to the revocation. Every app of the suite
    # runs the periodic reaper, which may get there first.
    await asyncio.sleep(0.1)
    [row] = await connection_rows(admin_conn, vm["id"])
    assert row["status"] == "connected" or row["close_reason"] == "credential_revoked", dict(row)
    await reap(jobs_conn)
    [row] = await connection_rows(admin_conn, vm["id"])
    assert (row["status"], row["close_reason"]) == ("disconnected", "credential_revoked")


# --- the reaper -------------------------------------------------------------------------

async def test_reaper_closes_stale_and_dead_instance_rows_only(client, admin_conn, jobs_conn, tenant, other):
    vm, other_vm = await make_vm(client, tenant), await make_vm(client, other)
    dead = f"dead-{uuid.uuid4().hex}"
    stale = await insert_connection(admin_conn, tenant, vm, instance=f"gone-{uuid.uuid4().hex}", seen_ago="10 minutes")
    of_dead = await insert_connection(admin_conn, other, other_vm, instance=dead)
    alive = await insert_connection(admin_conn, tenant, vm, instance=f"alive-{uuid.uuid4().hex}", seen_ago="20 seconds")

    # the threshold cannot be pushed below 30 s: a live row is never closed by a careless caller
    await reap(jobs_conn, stale="0 seconds")
    assert await admin_conn.fetchval("select status from desktop_connection where id = $1", alive) == "connected"

    await reap(jobs_conn, instance=dead)
    rows = {r["id"]: r for r in await admin_conn.fetch(
        "select * from desktop_connection where id = any($1::uuid[])", [stale, of_dead, alive])}
    assert (rows[stale]["status"], rows[stale]["close_reason"]) == ("disconnected", "stale")
    assert (rows[of_dead]["status"], rows[of_dead]["close_reason"]) == ("disconnected", "api_instance_gone")
    assert rows[alive]["status"] == "connected"

    # each close is audited in its own organization, attributed to the connection's token
    for row_id, owner in [(stale, tenant), (of_dead, other)]:
        audit = await admin_conn.fetchrow(
            "select organization_id::text, token_id::text, user_id::text, request_id from token_audit_log"
            " where row_id = $1 and action = 'UPDATE'", row_id)
        assert tuple(audit) == (owner.organization_id, owner.token_id, owner.user_id, "desktop-reaper")
    # and the context it set does not outlive the call
    await insert_connection(admin_conn, other, other_vm, instance=dead)
    async with jobs_conn.transaction():
        assert await reap(jobs_conn, instance=dead) == 1
        assert await jobs_conn.fetchval("select current_setting('backtrace_functions')") == ""


async def test_start_up_closes_this_instances_previous_life(settings, admin_conn, tenant):
    """A stable DESKTOP_INSTANCE_ID: rows left open by the crashed previous process of the
    same id are closed when the new one starts, without waiting for staleness."""
    instance = f"pod-{uuid.uuid4().hex[:8]}"
    app = create_app(settings.with_desktops(instance_id=instance))
    async with AsyncTestClient(app) as c:
        vm = await make_vm(c, tenant)
    left_open = await insert_connection(admin_conn, tenant, vm, instance=instance)
    async with AsyncTestClient(app):
        status, reason = await admin_conn.fetchrow(
            "select status, close_reason from desktop_connection where id = $1", left_open)
    assert (status, reason) == ("disconnected", "api_instance_gone")


async def test_api_role_cannot_write_connections_around_the_handler(client, api_conn):
    """Over SQL with no context the API role sees no row and writes none; the reaper's
    grant is the definer's, not the API's."""
    assert await api_conn.fetchval("select count(*) from desktop_connection") == 0
    with pytest.raises(Exception, match="permission denied"):
        await api_conn.execute("update desktop_connection set vm_id = vm_id")
    with pytest.raises(Exception, match="permission denied"):
        await api_conn.execute("delete from desktop_connection")


# --- isolation, scopes, audit -----------------------------------------------------------

async def test_other_organizations_ids_are_404_everywhere(client, admin_conn, tenant, other):
    a, b = tenant, other
    b_config = await make_config(client, b)
    b_vm = await make_vm(client, b)
    b_macro = await make_macro(client, b, vm_id=b_vm["id"])
    b_exec = (await client.post(f"/v1/robot-macros/{b_macro['id']}/executions", headers=b.token_auth, json={})).json()
    b_conn = await insert_connection(admin_conn, b, b_vm, instance="x", seen_ago="0 seconds")
    a_macro = await make_macro(client, a)

    calls = [
        ("GET", f"/v1/desktop-configs/{b_config['id']}", None),
        ("PATCH", f"/v1/desktop-configs/{b_config['id']}", {"name": "stolen"}),
        ("DELETE", f"/v1/desktop-configs/{b_config['id']}", None),
        ("GET", f"/v1/desktop-vms/{b_vm['id']}", None),
        ("PATCH", f"/v1/desktop-vms/{b_vm['id']}", {"status": "stopped"}),
        ("DELETE", f"/v1/desktop-vms/{b_vm['id']}", None),
        ("POST", f"/v1/desktop-vms/{b_vm['id']}/start", None),
        ("POST", f"/v1/desktop-vms/{b_vm['id']}/stop", None),
        ("POST", f"/v1/desktop-vms/{b_vm['id']}/terminate", None),
        ("GET", f"/v1/robot-macros/{b_macro['id']}", None),
        ("PATCH", f"/v1/robot-macros/{b_macro['id']}", {"name": "stolen"}),
        ("DELETE", f"/v1/robot-macros/{b_macro['id']}", None),
        ("GET", f"/v1/robot-macros/{b_macro['id']}/executions", None),
        ("POST", f"/v1/robot-macros/{b_macro['id']}/executions", {}),
        ("GET", f"/v1/robot-macros/{b_macro['id']}/executions/{b_exec['id']}", None),
        ("PATCH", f"/v1/robot-macros/{b_macro['id']}/executions/{b_exec['id']}", {"status": "cancelled"}),
        ("GET", f"/v1/robot-macros/{a_macro['id']}/executions/{b_exec['id']}", None),
        ("PATCH", f"/v1/robot-macros/{a_macro['id']}/executions/{b_exec['id']}", {"status": "cancelled"}),
        ("POST", f"/v1/robot-macro-executions/{b_exec['id']}/heartbeat", {"claim_secret": "x"}),
        ("POST", f"/v1/robot-macro-executions/{b_exec['id']}/finish", {"claim_secret": "x", "exit_code": 0}),
        ("GET", f"/v1/desktop-connections/{b_conn}", None),
    ]
    for method, path, body in calls:
        r = await client.request(method, path, headers=a.token_auth, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)

    # references in bodies: 422 naming the field
    for path, body, field in [
        ("/v1/desktop-vms", {"config_id": b_config["id"], "name": "x"}, "config_id"),
        ("/v1/robot-macros", {"project_id": a.project_id, "name": "x", "vm_id": b_vm["id"]}, "vm_id"),
        (f"/v1/robot-macros/{a_macro['id']}/executions", {"vm_id": b_vm["id"]}, "vm_id"),
    ]:
        r = await client.post(path, headers=a.token_auth, json=body)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, (path, r.text)

    b_ids = {b_config["id"], b_vm["id"], b_macro["id"], str(b_conn)}
    for path in ["/v1/desktop-configs", "/v1/desktop-vms", "/v1/robot-macros", "/v1/desktop-connections"]:
        r = await client.get(path, headers=a.token_auth)
        assert r.status_code == 200 and not b_ids & {i["id"] for i in r.json()["items"]}, path
    r = await client.get("/v1/desktop-connections", headers=a.token_auth, params={"vm_id": b_vm["id"]})
    assert r.json()["items"] == []

    # nothing of b's changed
    assert await admin_conn.fetchval("select status from desktop_virtual_machine where id = $1",
                                     U(b_vm["id"])) == "running"
    assert await admin_conn.fetchval("select status from robot_macro_execution where id = $1",
                                     U(b_exec["id"])) == "queued"
    assert await admin_conn.fetchval("select name from desktop_configs where id = $1",
                                     U(b_config["id"])) == b_config["name"]


async def test_missing_scope_is_403_naming_it(client, tenant):
    vm = await make_vm(client, tenant)
    macro = await make_macro(client, tenant, vm_id=vm["id"])
    execution = (await client.post(f"/v1/robot-macros/{macro['id']}/executions", headers=tenant.token_auth, json={})).json()
    reader = bearer((await make_token(client, tenant, ["desktops:read"]))["token"])
    outsider = bearer((await make_token(client, tenant, ["agents:read"]))["token"])

    writes = [
        ("POST", "/v1/desktop-configs", {"project_id": tenant.project_id, "name": "n", "image": "i"}),
        ("PATCH", f"/v1/desktop-vms/{vm['id']}", {"name": "n"}),
        ("POST", f"/v1/desktop-vms/{vm['id']}/stop", None),
        ("DELETE", f"/v1/robot-macros/{macro['id']}", None),
        ("POST", f"/v1/robot-macros/{macro['id']}/executions", {}),
        ("PATCH", f"/v1/robot-macros/{macro['id']}/executions/{execution['id']}", {"status": "failed"}),
    ]
    for method, path, body in writes:
        r = await client.request(method, path, headers=reader, json=body)
        assert r.status_code == 403 and r.json()["missing_scope"] == "desktops:write", (path, r.text)
        assert "desktops:write" in r.json()["detail"]
    reads = ["/v1/desktop-configs", f"/v1/desktop-vms/{vm['id']}", "/v1/robot-macros",
             f"/v1/robot-macros/{macro['id']}/executions", "/v1/desktop-connections"]
    for path in reads:
        r = await client.get(path, headers=outsider)
        assert r.status_code == 403 and r.json()["missing_scope"] == "desktops:read", (path, r.text)
        r = await client.get(path, headers=reader)
        assert r.status_code == 200, (path, r.text)


async def test_audit_rows_attributed_to_the_token(client, admin_conn, tenant):
    vm = await make_vm(client, tenant)  # config insert, VM insert, VM update (start)
    macro = await make_macro(client, tenant, vm_id=vm["id"])
    execution = (await client.post(f"/v1/robot-macros/{macro['id']}/executions", headers=tenant.token_auth, json={})).json()
    ids = [U(i) for i in (vm["config_id"], vm["id"], macro["id"], execution["id"])]
    rows = await admin_conn.fetch(
        "select table_name, action, token_id::text, organization_id::text, changes from token_audit_log"
        " where row_id = any($1::uuid[]) order by id", ids)
    assert [(r["table_name"], r["action"]) for r in rows] == [
        ("desktop_configs", "INSERT"), ("desktop_virtual_machine", "INSERT"), ("desktop_virtual_machine", "UPDATE"),
        ("robot_macro", "INSERT"), ("robot_macro_execution", "INSERT")]
    assert {(r["token_id"], r["organization_id"]) for r in rows} == {(tenant.token_id, tenant.organization_id)}
    start = rows[2]["changes"]
    assert '"provisioning"' in start and '"running"' in start


def test_start_up_check_covers_websocket_routes():
    """create_app refuses a WebSocket route of ours that names no scope, like an HTTP one."""

    async def careless(socket: WebSocket) -> None:  # pragma: no cover - never served
        await socket.close()

    careless.__module__ = "tenant_api.resources.desktops"  # one of ours
    with pytest.raises(RuntimeError, match="neither public nor scope"):
        _check_route_security(Litestar(route_handlers=[websocket("/ws")(careless)]))
