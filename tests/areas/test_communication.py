"""Video calls (calls), services (services), device tokens and notification
preferences (notifications, per user), the organization's trial (billing)."""

import datetime as dt
import json
import uuid
from uuid import UUID

import asyncpg
import pytest

from tenant_api.auth.passwords import PasswordWork
from tests.support.tenants import bearer, make_token, signup


def field_of(r) -> str:
    assert r.status_code == 422, r.text
    return r.json()["errors"][0]["field"]


def iso(delta: dt.timedelta = dt.timedelta()) -> str:
    return (dt.datetime.now(dt.UTC) + delta).isoformat()


async def add_member(client, admin_conn, tenant, role: str = "member") -> dict[str, str]:
    """A second user of t's organization (inserted as the superuser), logged in."""
    email, password = f"{uuid.uuid4().hex[:10]}@example.com", "pw-second-member-long"
    uid = await admin_conn.fetchval(
        "insert into user_account (email, password_hash, display_name) values ($1, $2, 'second') returning id",
        email, await PasswordWork().hash(password))
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role) values ($1, $2, $3)",
                             UUID(tenant.organization_id), uid, role)
    r = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200 and r.json()["organization_id"] == tenant.organization_id, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}", "user_id": str(uid)}


def hdr(member: dict[str, str]) -> dict[str, str]:
    return {"Authorization": member["Authorization"]}


async def new_agent(client, tenant, project_id=None) -> dict:
    r = await client.post("/v1/agents", headers=tenant.token_auth, json={"project_id": project_id or tenant.project_id,
                                                            "name": uuid.uuid4().hex[:8]})
    assert r.status_code == 201, r.text
    return r.json()


# -- video calls ------------------------------------------------------------------------------


async def test_video_call_participants_end_and_duration(client, admin_conn):
    t, other = await signup(client), await signup(client)
    agent = await new_agent(client, t)
    foreign_agent = await new_agent(client, other)
    r = await client.post("/v1/projects", headers=t.token_auth, json={"workspace_id": t.workspace_id, "name": "second"})
    assert r.status_code == 201, r.text
    agent_elsewhere = await new_agent(client, t, r.json()["id"])
    me = {"type": "user", "id": t.user_id}

    body = {"project_id": t.project_id, "title": "standup",
            "participants": [me, {"type": "agent", "id": agent["id"]}], "started_at": iso(-dt.timedelta(seconds=90))}
    r = await client.post("/v1/video-calls", headers=t.token_auth, json=body)
    assert r.status_code == 201, r.text
    call = r.json()
    assert call["status"] == "active" and call["ended_at"] is None and call["duration_seconds"] is None
    assert call["participants"] == body["participants"]

    bad_participants = [
        [{"type": "agent", "id": foreign_agent["id"]}],  # another organization's agent
        [{"type": "agent", "id": agent_elsewhere["id"]}],  # an agent of another project
        [{"type": "user", "id": other.user_id}],  # not a member
        [me, me],
    ]
    for participants in bad_participants:
        r = await client.post("/v1/video-calls", headers=t.token_auth, json={"project_id": t.project_id,
                                                                     "participants": participants})
        assert field_of(r).startswith("participants["), r.text
    r = await client.post("/v1/video-calls", headers=t.token_auth,
                          json={"project_id": t.project_id, "participants": [{"type": "bot", "id": t.user_id}]})
    assert r.status_code == 422
    assert field_of(await client.post("/v1/video-calls", headers=t.token_auth, json={
        "project_id": t.project_id, "started_at": iso(dt.timedelta(hours=1))})) == "started_at"
    r = await client.post("/v1/video-calls", headers=t.token_auth, json={"project_id": t.project_id,
                                                                 "started_at": "2026-01-01T10:00:00"})
    assert r.status_code == 422 and "timezone" in r.text
    assert field_of(await client.post("/v1/video-calls", headers=t.token_auth,
                                      json={"project_id": other.project_id})) == "project_id"
    # status is derived, not writable
    r = await client.patch(f"/v1/video-calls/{call['id']}", headers=t.token_auth, json={"status": "ended"})
    assert r.status_code == 422

    r = await client.post(f"/v1/video-calls/{call['id']}/end", headers=t.token_auth)
    assert r.status_code == 200, r.text
    ended = r.json()
    assert ended["status"] == "ended" and ended["ended_at"] is not None
    started, finished = dt.datetime.fromisoformat(ended["started_at"]), dt.datetime.fromisoformat(ended["ended_at"])
    assert ended["duration_seconds"] == int((finished - started).total_seconds()) >= 90
    assert (await client.get(f"/v1/video-calls/{call['id']}", headers=t.token_auth)).json() == ended

    r = await client.post(f"/v1/video-calls/{call['id']}/end", headers=t.token_auth)
    assert r.status_code == 409 and "ended" in r.json()["detail"] and "active" in r.json()["detail"], r.text
    assert (await client.get(f"/v1/video-calls/{call['id']}", headers=t.token_auth)).json()["ended_at"] == ended["ended_at"]

    live = (await client.post("/v1/video-calls", headers=t.token_auth, json={"project_id": t.project_id})).json()
    r = await client.get("/v1/video-calls", headers=t.token_auth, params={"status": "active"})
    assert [c["id"] for c in r.json()["items"]] == [live["id"]]
    r = await client.get("/v1/video-calls", headers=t.token_auth, params={"status": "ended"})
    assert [c["id"] for c in r.json()["items"]] == [call["id"]]

    rows = await admin_conn.fetch("select action, token_id::text, changes from token_audit_log where row_id = $1"
                                  " order by id", UUID(call["id"]))
    assert [(a["action"], a["token_id"]) for a in rows] == [("INSERT", t.token_id), ("UPDATE", t.token_id)]
    assert set(json.loads(rows[1]["changes"])) >= {"ended_at", "status"}


# -- services -------------------------------------------------------------------------------------


async def test_service_secret_env_is_write_only(client, admin_conn, caplog):
    t = await signup(client)
    secret, rotated, second = f"s3cr3t-{uuid.uuid4().hex}", f"r0tated-{uuid.uuid4().hex}", f"dbpw-{uuid.uuid4().hex}"
    body = {"project_id": t.project_id, "name": "billing-api", "image": "ghcr.io/acme/billing:1",
            "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "API_KEY", "value": secret, "secret": True}]}
    responses = []
    r = await client.post("/v1/services", headers=t.token_auth, json=body)
    assert r.status_code == 201, r.text
    responses.append(r)
    svc = r.json()
    assert svc["status"] == "pending"
    assert svc["env"] == [{"name": "LOG_LEVEL", "secret": False, "value": "debug"},
                          {"name": "API_KEY", "secret": True, "value": None}]
    responses.append(await client.get(f"/v1/services/{svc['id']}", headers=t.token_auth))
    responses.append(await client.get("/v1/services", headers=t.token_auth))

    # the deployer reports ready; sending back the list read (secret without value) keeps the secret
    r = await client.patch(f"/v1/services/{svc['id']}", headers=t.token_auth, json={"status": "ready"})
    assert r.json()["status"] == "ready"
    env = [*r.json()["env"], {"name": "DB_PASSWORD", "value": second, "secret": True}]
    r = await client.patch(f"/v1/services/{svc['id']}", headers=t.token_auth, json={"env": env})
    assert r.status_code == 200, r.text
    responses.append(r)
    assert r.json()["status"] == "pending"  # env changed: needs a redeploy
    stored = await admin_conn.fetchrow("select env::text, secret_env from service where id = $1", UUID(svc["id"]))
    assert json.loads(stored["secret_env"]) == {"API_KEY": secret, "DB_PASSWORD": second}
    assert secret not in stored["env"] and second not in stored["env"]

    # rotate one secret, drop the other; errors name the entry and never echo a value
    r = await client.patch(f"/v1/services/{svc['id']}", headers=t.token_auth, json={"env": [
        {"name": "API_KEY", "value": rotated, "secret": True}, {"name": "NEW_SECRET", "secret": True}]})
    assert field_of(r) == "env[1].value"
    responses.append(r)
    r = await client.patch(f"/v1/services/{svc['id']}", headers=t.token_auth, json={"env": [
        {"name": "API_KEY", "value": rotated, "secret": True}, {"name": "API_KEY", "value": second, "secret": True}]})
    assert field_of(r) == "env[1].name"
    responses.append(r)
    r = await client.patch(f"/v1/services/{svc['id']}", headers=t.token_auth,
                           json={"env": [{"name": "API_KEY", "value": rotated, "secret": True}]})
    assert r.status_code == 200, r.text
    responses.append(r)
    stored = await admin_conn.fetchval("select secret_env from service where id = $1", UUID(svc["id"]))
    assert json.loads(stored) == {"API_KEY": rotated}
    # a NUL can't be stored: a 422 naming the entry (not a 500 whose log line could carry the value)
    r = await client.patch(f"/v1/services/{svc['id']}", headers=t.token_auth,
                           json={"env": [{"name": "API_KEY", "value": "x\u0000" + second, "secret": True}]})
    assert field_of(r) == "env[0].value"
    responses.append(r)
    # a plain entry needs its value
    r = await client.patch(f"/v1/services/{svc['id']}", headers=t.token_auth, json={"env": [{"name": "LOG_LEVEL"}]})
    assert field_of(r) == "env[0].value"

    audit_r = await client.get("/v1/audit/events", headers=t.token_auth, params={"table": "service", "limit": 200})
    assert audit_r.status_code == 200 and len(audit_r.json()["items"]) >= 4
    responses.append(audit_r)
    assert (await client.delete(f"/v1/services/{svc['id']}", headers=t.token_auth)).status_code == 204

    for value in (secret, rotated, second):
        for resp in responses:
            assert value not in resp.text, resp.request.url
        assert value not in caplog.text
        assert await admin_conn.fetchval(
            "select count(*) from token_audit_log where changes::text like '%' || $1 || '%'", value) == 0
    audit = await admin_conn.fetch("select action, token_id::text, changes from token_audit_log where row_id = $1"
                                   " order by id", UUID(svc["id"]))
    assert [a["action"] for a in audit] == ["INSERT", "UPDATE", "UPDATE", "UPDATE", "DELETE"]
    assert {a["token_id"] for a in audit} == {t.token_id}
    assert json.loads(audit[2]["changes"])["secret_env"] == "[redacted]"  # a change is visible, not its value
    assert "secret_env" not in json.loads(audit[0]["changes"])


async def test_service_name_unique_per_project_and_validated(client):
    t = await signup(client)
    body = {"project_id": t.project_id, "name": "web", "image": "nginx:1"}
    assert (await client.post("/v1/services", headers=t.token_auth, json=body)).status_code == 201
    r = await client.post("/v1/services", headers=t.token_auth, json=body)
    assert r.status_code == 409 and "'web'" in r.json()["detail"], r.text
    project = (await client.post("/v1/projects", headers=t.token_auth,
                                 json={"workspace_id": t.workspace_id, "name": "p2"})).json()
    other = await client.post("/v1/services", headers=t.token_auth, json={**body, "project_id": project["id"]})
    assert other.status_code == 201, other.text
    r = await client.patch(f"/v1/services/{other.json()['id']}", headers=t.token_auth, json={"status": "ready"})
    assert r.json()["status"] == "ready"
    r = await client.patch(f"/v1/services/{other.json()['id']}", headers=t.token_auth, json={"image": "nginx:2"})
    assert r.json()["status"] == "pending"  # new image: redeploy
    for bad in ("Web", "web_1", "1web", "web-", "a" * 64):
        r = await client.post("/v1/services", headers=t.token_auth, json={**body, "name": bad})
        assert r.status_code == 422 and "name" in r.text, bad
    r = await client.post("/v1/services", headers=t.token_auth,
                          json={**body, "name": "envy", "env": [{"name": "1BAD", "value": "x"}]})
    assert r.status_code == 422 and "env" in r.text
    r = await client.patch(f"/v1/services/{other.json()['id']}", headers=t.token_auth, json={"status": "exploded"})
    assert r.status_code == 422


# -- device tokens ---------------------------------------------------------------------------------


async def test_device_tokens_are_per_user_and_idempotent(client, admin_conn):
    t = await signup(client)
    second = await add_member(client, admin_conn, t)
    push = f"fcm-{uuid.uuid4().hex}"

    r = await client.post("/v1/device-tokens", headers=t.token_auth, json={"platform": "ios", "token": push})
    assert r.status_code == 201, r.text
    mine = r.json()
    assert mine["user_id"] == t.user_id and mine["token"] == push
    # registering again returns the same row; a changed platform is recorded
    r = await client.post("/v1/device-tokens", headers=t.token_auth, json={"platform": "ios", "token": push})
    assert r.json()["id"] == mine["id"]
    r = await client.post("/v1/device-tokens", headers=t.token_auth, json={"platform": "android", "token": push})
    assert r.json()["id"] == mine["id"] and r.json()["platform"] == "android"
    r = await client.get("/v1/device-tokens", headers=t.token_auth)
    assert [i["id"] for i in r.json()["items"]] == [mine["id"]]

    # user_id comes from the credential, never the body
    r = await client.post("/v1/device-tokens", headers=t.token_auth,
                          json={"platform": "ios", "token": "x", "user_id": second["user_id"]})
    assert r.status_code == 422 and "user_id" in r.text
    r = await client.post("/v1/device-tokens", headers=t.token_auth, json={"platform": "symbian", "token": "x"})
    assert r.status_code == 422 and "platform" in r.text

    # the other member of the same organization sees none of it, and can't touch it
    other = hdr(second)
    assert (await client.get("/v1/device-tokens", headers=other)).json()["items"] == []
    assert (await client.get(f"/v1/device-tokens/{mine['id']}", headers=other)).status_code == 404
    assert (await client.delete(f"/v1/device-tokens/{mine['id']}", headers=other)).status_code == 404
    # ...and may register the same push token for themselves: a separate row
    r = await client.post("/v1/device-tokens", headers=other, json={"platform": "web", "token": push})
    assert r.status_code == 201 and r.json()["id"] != mine["id"] and r.json()["user_id"] == second["user_id"]
    # not even an owner's session sees another user's tokens
    assert [i["id"] for i in (await client.get("/v1/device-tokens", headers=t.session_auth)).json()["items"]] == [mine["id"]]

    # audit: attributed, never the push token itself; unchanged re-registration leaves no row
    rows = await admin_conn.fetch("select action, token_id::text, changes::text from token_audit_log"
                                  " where row_id = $1 order by id", UUID(mine["id"]))
    assert [(a["action"], a["token_id"]) for a in rows] == [("INSERT", t.token_id), ("UPDATE", t.token_id)]
    assert all(push not in a["changes"] for a in rows)

    assert (await client.delete(f"/v1/device-tokens/{mine['id']}", headers=t.token_auth)).status_code == 204
    assert (await client.get(f"/v1/device-tokens/{mine['id']}", headers=t.token_auth)).status_code == 404
    # removing the member removes their devices
    await admin_conn.execute("delete from organization_membership where organization_id = $1 and user_id = $2",
                             UUID(t.organization_id), UUID(second["user_id"]))
    assert await admin_conn.fetchval("select count(*) from device_token where user_id = $1",
                                     UUID(second["user_id"])) == 0


# -- notification preferences ---------------------------------------------------------------------


async def test_notification_preferences_defaults_put_and_per_user(client, admin_conn):
    t = await signup(client)
    second = await add_member(client, admin_conn, t)
    defaults = {"email": {"enabled": True, "events": {}}, "push": {"enabled": True, "events": {}},
                "sms": {"enabled": False, "events": {}}, "in_app": {"enabled": True, "events": {}}}
    r = await client.get("/v1/notification-preferences", headers=t.token_auth)
    assert r.status_code == 200 and r.json() == defaults, r.text

    r = await client.put("/v1/notification-preferences", headers=t.token_auth, json={
        "email": {"enabled": False}, "push": {"enabled": True, "events": {"task.failed": True, "task.done": False}}})
    assert r.status_code == 200, r.text
    expected = {**defaults, "email": {"enabled": False, "events": {}},
                "push": {"enabled": True, "events": {"task.failed": True, "task.done": False}}}
    assert r.json() == expected
    # channels left out keep their settings
    r = await client.put("/v1/notification-preferences", headers=t.token_auth, json={"sms": {"enabled": True}})
    expected["sms"] = {"enabled": True, "events": {}}
    assert r.json() == expected
    assert (await client.get("/v1/notification-preferences", headers=t.token_auth)).json() == expected

    for bad in ({"fax": {"enabled": True}}, {"email": {"events": {}}}, {"email": {"enabled": True, "events": {"Bad Event": True}}},
                {"email": {"enabled": "yes"}}):
        assert (await client.put("/v1/notification-preferences", headers=t.token_auth, json=bad)).status_code == 422, bad

    # the second member has their own (still default) preferences, and theirs don't touch ours
    other = hdr(second)
    assert (await client.get("/v1/notification-preferences", headers=other)).json() == defaults
    r = await client.put("/v1/notification-preferences", headers=other, json={"email": {"enabled": True,
                                                                                      "events": {"x": False}}})
    assert r.json()["email"] == {"enabled": True, "events": {"x": False}}
    assert (await client.get("/v1/notification-preferences", headers=t.token_auth)).json() == expected
    users = await admin_conn.fetch("select user_id::text, count(*) from notification_preference"
                                   " where organization_id = $1 group by 1", UUID(t.organization_id))
    assert dict((u["user_id"], u["count"]) for u in users) == {t.user_id: 3, second["user_id"]: 1}

    rows = await admin_conn.fetch("select action, token_id::text from token_audit_log where organization_id = $1"
                                  " and table_name = 'notification_preference' and user_id = $2",
                                  UUID(t.organization_id), UUID(t.user_id))
    assert sorted((a["action"], a["token_id"]) for a in rows) == [("INSERT", t.token_id)] * 3
    # an unchanged PUT writes no audit row
    await client.put("/v1/notification-preferences", headers=t.token_auth, json={"sms": {"enabled": True}})
    assert await admin_conn.fetchval("select count(*) from token_audit_log where organization_id = $1"
                                     " and table_name = 'notification_preference' and user_id = $2",
                                     UUID(t.organization_id), UUID(t.user_id)) == 3


# -- trial ----------------------------------------------------------------------------------------


async def test_trial_put_get_and_status_derivation(client, admin_conn):
    t = await signup(client)
    r = await client.get("/v1/trial", headers=t.token_auth)
    assert r.status_code == 404 and r.json()["detail"] == "trial not found"
    assert field_of(await client.put("/v1/trial", headers=t.token_auth, json={"plan": "pro"})) == "ends_at"
    assert field_of(await client.put("/v1/trial", headers=t.token_auth, json={"ends_at": iso(dt.timedelta(days=14))})) == "plan"

    r = await client.put("/v1/trial", headers=t.token_auth, json={"plan": "pro", "ends_at": iso(dt.timedelta(days=14))})
    assert r.status_code == 200, r.text
    trial = r.json()
    assert trial["status"] == "active" and trial["plan"] == "pro"
    assert abs(dt.datetime.fromisoformat(trial["started_at"]) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert (await client.get("/v1/trial", headers=t.token_auth)).json() == trial

    r = await client.put("/v1/trial", headers=t.token_auth, json={"cancelled_at": iso()})
    assert r.json()["status"] == "cancelled" and r.json()["id"] == trial["id"] and r.json()["plan"] == "pro"
    assert field_of(await client.put("/v1/trial", headers=t.token_auth, json={"converted_at": iso()})) == "converted_at"
    r = await client.put("/v1/trial", headers=t.token_auth, json={"cancelled_at": None, "converted_at": iso()})
    assert r.json()["status"] == "converted", r.text
    r = await client.put("/v1/trial", headers=t.token_auth, json={"converted_at": None, "started_at": iso(-dt.timedelta(days=30)),
                                                          "ends_at": iso(-dt.timedelta(days=16))})
    assert r.json()["status"] == "expired", r.text
    assert field_of(await client.put("/v1/trial", headers=t.token_auth, json={"ends_at": iso(-dt.timedelta(days=40))})) \
        == "ends_at"
    r = await client.put("/v1/trial", headers=t.token_auth, json={"ends_at": "2030-01-01T00:00:00"})
    assert r.status_code == 422 and "timezone" in r.text
    r = await client.put("/v1/trial", headers=t.token_auth, json={"status": "active"})
    assert r.status_code == 422

    assert await admin_conn.fetchval("select count(*) from user_trial where organization_id = $1",
                                     UUID(t.organization_id)) == 1
    rows = await admin_conn.fetch("select action, token_id::text from token_audit_log where row_id = $1 order by id",
                                  UUID(trial["id"]))
    assert rows[0]["action"] == "INSERT" and {a["token_id"] for a in rows} == {t.token_id} and len(rows) == 4

    # an admin (billing:read) reads the trial and may not change it
    admin = hdr(await add_member(client, admin_conn, t, role="admin"))
    assert (await client.get("/v1/trial", headers=admin)).status_code == 200
    r = await client.put("/v1/trial", headers=admin, json={"plan": "max"})
    assert r.status_code == 403 and r.json()["missing_scope"] == "billing:write"
    restricted = bearer((await make_token(client, t, ["billing:write"], project_ids=[t.project_id]))["token"])
    r = await client.put("/v1/trial", headers=restricted, json={"plan": "max"})
    assert r.status_code == 403 and "project-restricted" in r.json()["detail"]
    assert (await client.get("/v1/trial", headers=t.token_auth)).json()["plan"] == "pro"


# -- isolation and scopes ---------------------------------------------------------------------------


async def test_another_organizations_ids_are_404_on_every_route(client):
    a, b = await signup(client), await signup(client)
    call = (await client.post("/v1/video-calls", headers=a.token_auth, json={"project_id": a.project_id})).json()
    svc = (await client.post("/v1/services", headers=a.token_auth,
                             json={"project_id": a.project_id, "name": "s", "image": "i"})).json()
    dev = (await client.post("/v1/device-tokens", headers=a.token_auth, json={"platform": "web", "token": "tok"})).json()
    await client.put("/v1/trial", headers=a.token_auth, json={"plan": "pro", "ends_at": iso(dt.timedelta(days=3))})
    await client.put("/v1/notification-preferences", headers=a.token_auth, json={"email": {"enabled": False}})

    calls = [
        ("GET", f"/v1/video-calls/{call['id']}", None),
        ("PATCH", f"/v1/video-calls/{call['id']}", {"title": "x"}),
        ("DELETE", f"/v1/video-calls/{call['id']}", None),
        ("POST", f"/v1/video-calls/{call['id']}/end", None),
        ("GET", f"/v1/services/{svc['id']}", None),
        ("PATCH", f"/v1/services/{svc['id']}", {"status": "stopped"}),
        ("DELETE", f"/v1/services/{svc['id']}", None),
        ("GET", f"/v1/device-tokens/{dev['id']}", None),
        ("DELETE", f"/v1/device-tokens/{dev['id']}", None),
        ("GET", "/v1/trial", None),
    ]
    for method, path, body in calls:
        r = await client.request(method, path, headers=b.token_auth, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    # a project id of another organization in a body: 422 naming it
    assert field_of(await client.post("/v1/services", headers=b.token_auth,
                                      json={"project_id": a.project_id, "name": "s", "image": "i"})) == "project_id"
    # lists and the per-organization/per-user documents show B only B's
    for path in ("/v1/video-calls", "/v1/services", "/v1/device-tokens"):
        assert (await client.get(path, headers=b.token_auth)).json()["items"] == [], path
    assert (await client.get("/v1/notification-preferences", headers=b.token_auth)).json()["email"]["enabled"] is True
    # B's trial is B's own row
    r = await client.put("/v1/trial", headers=b.token_auth, json={"plan": "basic", "ends_at": iso(dt.timedelta(days=3))})
    assert r.status_code == 200
    # A's rows are untouched
    assert (await client.get(f"/v1/video-calls/{call['id']}", headers=a.token_auth)).json()["status"] == "active"
    assert (await client.get(f"/v1/services/{svc['id']}", headers=a.token_auth)).json()["status"] == "pending"
    assert (await client.get(f"/v1/device-tokens/{dev['id']}", headers=a.token_auth)).status_code == 200
    assert (await client.get("/v1/trial", headers=a.token_auth)).json()["plan"] == "pro"


async def test_routes_name_the_missing_scope(client):
    t = await signup(client)
    some = str(uuid.uuid4())
    nothing = bearer((await make_token(client, t, ["org:read"]))["token"])
    reads_only = bearer((await make_token(client, t, ["calls:read", "services:read", "notifications:read",
                                                      "billing:read"]))["token"])
    reads = [("calls", "/v1/video-calls"), ("calls", f"/v1/video-calls/{some}"),
             ("services", "/v1/services"), ("services", f"/v1/services/{some}"),
             ("notifications", "/v1/device-tokens"), ("notifications", f"/v1/device-tokens/{some}"),
             ("notifications", "/v1/notification-preferences"), ("billing", "/v1/trial")]
    writes = [("calls", "POST", "/v1/video-calls", {"project_id": t.project_id}),
              ("calls", "PATCH", f"/v1/video-calls/{some}", {"title": "x"}),
              ("calls", "DELETE", f"/v1/video-calls/{some}", None),
              ("calls", "POST", f"/v1/video-calls/{some}/end", None),
              ("services", "POST", "/v1/services", {"project_id": t.project_id, "name": "s", "image": "i"}),
              ("services", "PATCH", f"/v1/services/{some}", {"status": "ready"}),
              ("services", "DELETE", f"/v1/services/{some}", None),
              ("notifications", "POST", "/v1/device-tokens", {"platform": "web", "token": "t"}),
              ("notifications", "DELETE", f"/v1/device-tokens/{some}", None),
              ("notifications", "PUT", "/v1/notification-preferences", {"email": {"enabled": False}}),
              ("billing", "PUT", "/v1/trial", {"plan": "p", "ends_at": iso(dt.timedelta(days=1))})]
    for area, path in reads:
        r = await client.get(path, headers=nothing)
        assert r.status_code == 403 and r.json()["missing_scope"] == f"{area}:read", (path, r.text)
        assert f"{area}:read" in r.json()["detail"]
        assert (await client.get(path, headers=reads_only)).status_code in (200, 404)
    for area, method, path, body in writes:
        r = await client.request(method, path, headers=reads_only, json=body)
        assert r.status_code == 403 and r.json()["missing_scope"] == f"{area}:write", (method, path, r.text)


async def test_per_user_rows_are_hidden_by_the_database_itself(client, admin_conn, api_conn):
    """The services filter by user too; this shows the policies alone keep another
    member's device tokens and preferences invisible and unwritable, as the API role."""
    from tenant_api.auth.credentials import token_hash

    t = await signup(client)
    second = await add_member(client, admin_conn, t)
    r = await client.post("/v1/tokens", headers=hdr(second), json={"name": "n", "scopes": ["notifications:write"]})
    assert r.status_code == 201, r.text
    second_token = r.json()["token"]
    assert (await client.post("/v1/device-tokens", headers=t.token_auth, json={"platform": "ios", "token": "a"})).status_code == 201
    assert (await client.put("/v1/notification-preferences", headers=t.token_auth,
                             json={"sms": {"enabled": True}})).status_code == 200

    async with api_conn.transaction():
        status = await api_conn.fetchval("select status from auth.begin_request($1, null, null, null)",
                                         token_hash(second_token))
        assert status == "ok"
        for table in ("device_token", "notification_preference"):
            assert await api_conn.fetchval(f"select count(*) from {table}") == 0, table
            assert await api_conn.fetchval(f"with u as (update {table} set updated_at = now() returning 1)"
                                           " select count(*) from u") == 0, table
        # and cannot plant a row for the first user
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with api_conn.transaction():  # a savepoint
                await api_conn.execute("insert into device_token (organization_id, user_id, platform, token)"
                                       " values ($1, $2, 'web', 'planted')", UUID(t.organization_id), UUID(t.user_id))
    assert await admin_conn.fetchval("select count(*) from device_token where organization_id = $1",
                                     UUID(t.organization_id)) == 1
