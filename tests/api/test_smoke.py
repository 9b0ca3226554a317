from tests.support.tenants import bearer, signup


async def test_signup_login_me_and_agent_roundtrip(client, admin_conn):
    t = await signup(client)
    r = await client.get("/v1/me", headers=t.token_auth)
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["organization_id"] == t.organization_id and me["role"] == "owner"
    r = await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "a1"})
    assert r.status_code == 201, r.text
    agent = r.json()
    r = await client.get(f"/v1/agents/{agent['id']}", headers=t.token_auth)
    assert r.status_code == 200 and r.json()["name"] == "a1"
    rows = await admin_conn.fetch("select action, token_id::text from token_audit_log where row_id = $1",
                                  __import__("uuid").UUID(agent["id"]))
    assert [(r["action"], r["token_id"]) for r in rows] == [("INSERT", t.token_id)]


async def test_visible_but_not_writable_rows_get_403_and_stay(client, admin_conn):
    """A project-restricted credential can read workspaces but not change them: the
    database refuses (0 rows), and the API says 403 instead of a 500 or a silent 204."""
    from tests.support.tenants import make_token

    t = await signup(client)
    restricted = await make_token(client, t, ["org:write"], project_ids=[t.project_id])
    h = bearer(restricted["token"])
    assert (await client.get(f"/v1/workspaces/{t.workspace_id}", headers=h)).status_code == 200
    r = await client.patch(f"/v1/workspaces/{t.workspace_id}", headers=h, json={"name": "renamed"})
    assert r.status_code == 403, r.text
    r = await client.delete(f"/v1/workspaces/{t.workspace_id}", headers=h)
    assert r.status_code == 403, r.text
    name = await admin_conn.fetchval("select name from workspace where id = $1", __import__("uuid").UUID(t.workspace_id))
    assert name == "Default"
