"""Agent templates, profiles, email rules and conversation mappings (area agents)."""

import uuid
from uuid import UUID

from tests.support.tenants import bearer, make_token, signup


async def new_agent(client, tenant, name=None, **extra) -> dict:
    r = await client.post("/v1/agents", headers=tenant.token_auth,
                          json={"project_id": tenant.project_id, "name": name or uuid.uuid4().hex[:8], **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def new_template(client, tenant, slug=None, **extra) -> dict:
    body = {"slug": slug or f"tpl-{uuid.uuid4().hex[:8]}", "name": "Support bot", "category": "support", **extra}
    r = await client.post("/v1/agent-templates", headers=tenant.token_auth, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def audit(admin_conn, row_id: str):
    return await admin_conn.fetch(
        "select action, token_id::text, request_id, changes from token_audit_log where row_id = $1 order by id",
        UUID(row_id))


def field_of(r) -> str:
    assert r.status_code == 422, r.text
    return r.json()["errors"][0]["field"]


# -- profile -------------------------------------------------------------------------------


async def test_profile_upsert_replace_validation_and_cascade(client, admin_conn):
    t = await signup(client)
    agent = await new_agent(client, t)
    path = f"/v1/agents/{agent['id']}/profile"

    r = await client.get(path, headers=t.token_auth)
    assert r.status_code == 404 and r.json()["detail"] == "agent profile not found"

    full = {"display_name": "Ada", "avatar_url": "https://cdn.example.com/a.png", "voice": "alloy",
            "role": "Support lead", "bio": "Answers tickets."}
    r = await client.put(path, headers=t.token_auth, json=full)
    assert r.status_code == 200, r.text
    created = r.json()
    assert {k: created[k] for k in full} == full
    assert created["agent_id"] == agent["id"] and created["project_id"] == agent["project_id"]
    assert (await client.get(path, headers=t.token_auth)).json() == created

    # PUT replaces: what is left out is cleared; same row
    r = await client.put(path, headers=t.token_auth, json={"display_name": "Ada II"})
    assert r.status_code == 200, r.text
    replaced = r.json()
    assert replaced["id"] == created["id"]
    assert (replaced["display_name"], replaced["avatar_url"], replaced["voice"], replaced["role"], replaced["bio"]) \
        == ("Ada II", None, None, None, "")

    for bad in ("ftp://cdn.example.com/a.png", "javascript:alert(1)", "cdn.example.com/a.png",
                "https://user:pw@cdn.example.com/a.png", "https:///nohost"):
        r = await client.put(path, headers=t.token_auth, json={"display_name": "x", "avatar_url": bad})
        assert field_of(r) == "avatar_url", bad
    r = await client.put(path, headers=t.token_auth, json={"display_name": ""})
    assert r.status_code == 422 and "display_name" in r.text
    r = await client.put(path, headers=t.token_auth, json={"display_name": "x", "mood": "happy"})
    assert r.status_code == 422 and "mood" in r.text

    # audit: the insert and the replacement, attributed to the token; an identical PUT adds nothing
    rows = await audit(admin_conn, created["id"])
    assert [(a["action"], a["token_id"]) for a in rows] == [("INSERT", t.token_id), ("UPDATE", t.token_id)]
    assert (await client.put(path, headers=t.token_auth, json={"display_name": "Ada II"})).status_code == 200
    assert len(await audit(admin_conn, created["id"])) == 2

    r = await client.get(f"/v1/agents/{uuid.uuid4()}/profile", headers=t.token_auth)
    assert r.status_code == 404 and r.json()["detail"] == "agent not found"

    assert (await client.delete(f"/v1/agents/{agent['id']}", headers=t.token_auth)).status_code == 204
    assert await admin_conn.fetchval("select count(*) from agent_profile where id = $1", UUID(created["id"])) == 0


# -- templates -----------------------------------------------------------------------------


async def test_template_slug_rules_filters_and_update(client):
    t, other = await signup(client), await signup(client)
    tpl = await new_template(client, t, slug="support-bot", tools=["email", "web_search"],
                             default_profile={"voice": "alloy"})
    assert tpl["tools"] == ["email", "web_search"] and tpl["default_profile"] == {"voice": "alloy"}

    r = await client.post("/v1/agent-templates", headers=t.token_auth,
                          json={"slug": "support-bot", "name": "again", "category": "support"})
    assert r.status_code == 409 and "support-bot" in r.json()["detail"], r.text
    # slugs are per organization
    await new_template(client, other, slug="support-bot")

    for bad in ("Support-Bot", "support bot", "a--b", "-a", "a-", "", "ü"):
        r = await client.post("/v1/agent-templates", headers=t.token_auth, json={"slug": bad, "name": "n", "category": "c"})
        assert r.status_code == 422 and "slug" in r.text, bad
    r = await client.post("/v1/agent-templates", headers=t.token_auth,
                          json={"slug": "dup-tools", "name": "n", "category": "c", "tools": ["a", "a"]})
    assert field_of(r) == "tools"
    r = await client.post("/v1/agent-templates", headers=t.token_auth,
                          json={"slug": "bad-avatar", "name": "n", "category": "c",
                                "default_profile": {"avatar_url": "ftp://x.example/a.png"}})
    assert field_of(r) == "default_profile.avatar_url"
    r = await client.post("/v1/agent-templates", headers=t.token_auth,
                          json={"slug": "bad-key", "name": "n", "category": "c", "default_profile": {"mood": "x"}})
    assert r.status_code == 422 and "mood" in r.text

    sales = await new_template(client, t, category="sales")
    r = await client.get("/v1/agent-templates?category=sales", headers=t.token_auth)
    assert [i["id"] for i in r.json()["items"]] == [sales["id"]]
    r = await client.get("/v1/agent-templates?category=support", headers=t.token_auth)
    assert [i["id"] for i in r.json()["items"]] == [tpl["id"]]

    r = await client.patch(f"/v1/agent-templates/{sales['id']}", headers=t.token_auth, json={"slug": "support-bot"})
    assert r.status_code == 409, r.text
    r = await client.patch(f"/v1/agent-templates/{sales['id']}", headers=t.token_auth,
                           json={"slug": "sales-bot", "default_profile": {"role": "Closer"}})
    assert r.status_code == 200 and r.json()["slug"] == "sales-bot", r.text
    assert r.json()["default_profile"] == {"role": "Closer"}
    # keeping one's own slug is not a conflict
    r = await client.patch(f"/v1/agent-templates/{sales['id']}", headers=t.token_auth, json={"slug": "sales-bot"})
    assert r.status_code == 200, r.text


async def test_agent_from_template_gets_type_and_profile(client, admin_conn):
    t, other = await signup(client), await signup(client)
    tpl = await new_template(client, t, category="support",
                             default_profile={"voice": "alloy", "role": "Support lead",
                                              "avatar_url": "https://cdn.example.com/s.png"})

    agent = await new_agent(client, t, name="helper", template_id=tpl["id"])
    assert agent["type"] == "support" and agent["template_id"] == tpl["id"]
    r = await client.get(f"/v1/agents/{agent['id']}/profile", headers=t.token_auth)
    assert r.status_code == 200, r.text
    profile = r.json()
    assert (profile["display_name"], profile["voice"], profile["role"], profile["avatar_url"], profile["bio"]) == \
        ("helper", "alloy", "Support lead", "https://cdn.example.com/s.png", "")
    # one request, one transaction: agent and profile carry the same request id
    agent_audit, profile_audit = await audit(admin_conn, agent["id"]), await audit(admin_conn, profile["id"])
    assert agent_audit[0]["request_id"] == profile_audit[0]["request_id"] is not None
    assert profile_audit[0]["token_id"] == t.token_id

    explicit = await new_agent(client, t, type="custom", template_id=tpl["id"])
    assert explicit["type"] == "custom"
    plain = await new_agent(client, t)
    assert plain["type"] == "assistant" and plain["template_id"] is None
    assert (await client.get(f"/v1/agents/{plain['id']}/profile", headers=t.token_auth)).status_code == 404
    r = await client.get(f"/v1/agents?template_id={tpl['id']}", headers=t.token_auth)
    assert {i["id"] for i in r.json()["items"]} == {agent["id"], explicit["id"]}

    # another organization's template, or none at all: 422 naming the field, nothing created
    before = await admin_conn.fetchval("select count(*) from agent where organization_id = $1",
                                       UUID(t.organization_id))
    foreign = await new_template(client, other)
    for template_id in (foreign["id"], str(uuid.uuid4())):
        r = await client.post("/v1/agents", headers=t.token_auth,
                              json={"project_id": t.project_id, "name": "x", "template_id": template_id})
        assert field_of(r) == "template_id"
    assert await admin_conn.fetchval("select count(*) from agent where organization_id = $1",
                                     UUID(t.organization_id)) == before

    # deleting the template keeps the agent and its profile, forgetting only template_id
    assert (await client.delete(f"/v1/agent-templates/{tpl['id']}", headers=t.token_auth)).status_code == 204
    r = await client.get(f"/v1/agents/{agent['id']}", headers=t.token_auth)
    assert r.status_code == 200 and r.json()["template_id"] is None
    assert (await client.get(f"/v1/agents/{agent['id']}/profile", headers=t.token_auth)).status_code == 200


# -- email rules ------------------------------------------------------------------------------


async def test_email_rule_validation(client):
    t = await signup(client)
    agent = await new_agent(client, t)
    path = f"/v1/agents/{agent['id']}/email-rules"
    ok = {"direction": "inbound", "pattern": r".*@example\.com$", "action": "forward", "target": "ops@example.com"}

    r = await client.post(path, headers=t.token_auth, json={**ok, "pattern": "(unclosed"})
    assert field_of(r) == "pattern"
    assert "not a valid regular expression" in r.json()["detail"] and "missing )" in r.json()["detail"]
    r = await client.post(path, headers=t.token_auth, json={**ok, "pattern": "a" * 501})
    assert r.status_code == 422 and "pattern" in r.text
    r = await client.post(path, headers=t.token_auth, json={**ok, "pattern": "*oops"})
    assert field_of(r) == "pattern"
    assert field_of(await client.post(path, headers=t.token_auth, json={**ok, "target": None})) == "target"
    assert field_of(await client.post(path, headers=t.token_auth, json={**ok, "target": "not-an-address"})) == "target"
    assert field_of(await client.post(path, headers=t.token_auth, json={**ok, "action": "drop"})) == "target"
    assert field_of(await client.post(path, headers=t.token_auth, json={**ok, "action": "assign", "target": None})) == "target"
    r = await client.post(path, headers=t.token_auth, json={**ok, "priority": -1})
    assert r.status_code == 422 and "priority" in r.text
    r = await client.post(path, headers=t.token_auth, json={**ok, "direction": "sideways"})
    assert r.status_code == 422 and "direction" in r.text

    r = await client.post(path, headers=t.token_auth, json=ok)
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["agent_id"] == agent["id"] and rule["project_id"] == agent["project_id"] and rule["priority"] == 100
    # PATCH is checked against the merged row
    r = await client.patch(f"{path}/{rule['id']}", headers=t.token_auth, json={"action": "drop"})
    assert field_of(r) == "target"
    r = await client.patch(f"{path}/{rule['id']}", headers=t.token_auth, json={"action": "drop", "target": None})
    assert r.status_code == 200 and r.json()["target"] is None, r.text
    assert field_of(await client.patch(f"{path}/{rule['id']}", headers=t.token_auth, json={"pattern": "[z-a]"})) == "pattern"
    r = await client.post(path, headers=t.token_auth, json={"direction": "outbound", "pattern": "x", "action": "reply"})
    assert r.status_code == 201, r.text

    # a rule is reachable only under its own agent
    other_agent = await new_agent(client, t)
    r = await client.get(f"/v1/agents/{other_agent['id']}/email-rules/{rule['id']}", headers=t.token_auth)
    assert r.status_code == 404
    r = await client.get(f"/v1/agents/{other_agent['id']}/email-rules", headers=t.token_auth)
    assert r.json()["items"] == []
    r = await client.get(f"{path}?direction=outbound", headers=t.token_auth)
    assert [i["direction"] for i in r.json()["items"]] == ["outbound"]


async def test_email_rules_listed_by_priority_with_keyset_cursor(client):
    t = await signup(client)
    agent = await new_agent(client, t)
    path = f"/v1/agents/{agent['id']}/email-rules"
    created = []
    for priority in (50, 10, 50, 0, 10, 1_000_000, 10):
        r = await client.post(path, headers=t.token_auth, json={"direction": "inbound", "pattern": f"p{priority}",
                                                        "action": "reply", "priority": priority})
        assert r.status_code == 201, r.text
        created.append(r.json())
    expected = [r["id"] for r in sorted(created, key=lambda r: (r["priority"], UUID(r["id"])))]

    seen, cursor = [], None
    while True:
        r = await client.get(path, headers=t.token_auth, params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [i["id"] for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == expected

    # a rule moved while paging keeps the order consistent for what is still to come
    r = await client.patch(f"{path}/{expected[0]}", headers=t.token_auth, json={"priority": 999})
    assert r.status_code == 200
    r = await client.get(path, headers=t.token_auth, params={"limit": 200})
    assert [i["id"] for i in r.json()["items"]][-2:] == [expected[0], expected[-1]]

    assert field_of(await client.get(path, headers=t.token_auth, params={"cursor": "AAAA"})) == "cursor"


# -- conversation mappings ---------------------------------------------------------------------


async def test_agent_conversation_key_is_unique_per_agent(client, admin_conn):
    t = await signup(client)
    a1, a2 = await new_agent(client, t), await new_agent(client, t)
    path = f"/v1/agents/{a1['id']}/conversations"
    r = await client.post(path, headers=t.token_auth, json={"conversation_key": "slack:C1", "external_conversation_id": "ext-1"})
    assert r.status_code == 201, r.text
    conv = r.json()
    assert conv["agent_id"] == a1["id"] and conv["project_id"] == a1["project_id"]

    r = await client.post(path, headers=t.token_auth, json={"conversation_key": "slack:C1", "external_conversation_id": "ext-2"})
    assert r.status_code == 409, r.text
    assert "slack:C1" in r.json()["detail"] and r.json()["existing_id"] == conv["id"]
    r = await client.post(f"/v1/agents/{a2['id']}/conversations", headers=t.token_auth,
                          json={"conversation_key": "slack:C1", "external_conversation_id": "ext-3"})
    assert r.status_code == 201, r.text

    r = await client.get(path, headers=t.token_auth, params={"conversation_key": "slack:C1"})
    assert [i["external_conversation_id"] for i in r.json()["items"]] == ["ext-1"]
    r = await client.patch(f"{path}/{conv['id']}", headers=t.token_auth, json={"external_conversation_id": "ext-9"})
    assert r.status_code == 200 and r.json()["external_conversation_id"] == "ext-9"
    r = await client.patch(f"{path}/{conv['id']}", headers=t.token_auth, json={"conversation_key": "other"})
    assert r.status_code == 422
    rows = await audit(admin_conn, conv["id"])
    assert [(a["action"], a["token_id"]) for a in rows] == [("INSERT", t.token_id), ("UPDATE", t.token_id)]
    # the agent goes, its mappings go
    assert (await client.delete(f"/v1/agents/{a1['id']}", headers=t.token_auth)).status_code == 204
    assert await admin_conn.fetchval("select count(*) from agent_conversation where agent_id = $1", UUID(a1["id"])) == 0


# -- isolation and scopes -------------------------------------------------------------------------


async def test_another_organizations_ids_are_404_on_every_agents_route(client):
    a, b = await signup(client), await signup(client)
    agent = await new_agent(client, a)
    tpl = await new_template(client, a)
    assert (await client.put(f"/v1/agents/{agent['id']}/profile", headers=a.token_auth,
                             json={"display_name": "A"})).status_code == 200
    rule = (await client.post(f"/v1/agents/{agent['id']}/email-rules", headers=a.token_auth,
                              json={"direction": "inbound", "pattern": "x", "action": "reply"})).json()
    conv = (await client.post(f"/v1/agents/{agent['id']}/conversations", headers=a.token_auth,
                              json={"conversation_key": "k", "external_conversation_id": "e"})).json()
    b_agent = await new_agent(client, b)

    rules, convs = f"/v1/agents/{agent['id']}/email-rules", f"/v1/agents/{agent['id']}/conversations"
    calls = [
        ("GET", f"/v1/agents/{agent['id']}/profile", None),
        ("PUT", f"/v1/agents/{agent['id']}/profile", {"display_name": "B"}),
        ("GET", f"/v1/agent-templates/{tpl['id']}", None),
        ("PATCH", f"/v1/agent-templates/{tpl['id']}", {"name": "B"}),
        ("DELETE", f"/v1/agent-templates/{tpl['id']}", None),
        ("GET", rules, None),
        ("POST", rules, {"direction": "inbound", "pattern": "x", "action": "reply"}),
        ("GET", f"{rules}/{rule['id']}", None),
        ("PATCH", f"{rules}/{rule['id']}", {"priority": 1}),
        ("DELETE", f"{rules}/{rule['id']}", None),
        # B's own agent in the path, A's row id
        ("GET", f"/v1/agents/{b_agent['id']}/email-rules/{rule['id']}", None),
        ("PATCH", f"/v1/agents/{b_agent['id']}/email-rules/{rule['id']}", {"priority": 1}),
        ("DELETE", f"/v1/agents/{b_agent['id']}/email-rules/{rule['id']}", None),
        ("GET", convs, None),
        ("POST", convs, {"conversation_key": "k2", "external_conversation_id": "e"}),
        ("GET", f"{convs}/{conv['id']}", None),
        ("PATCH", f"{convs}/{conv['id']}", {"external_conversation_id": "x"}),
        ("DELETE", f"{convs}/{conv['id']}", None),
        ("GET", f"/v1/agents/{b_agent['id']}/conversations/{conv['id']}", None),
        ("DELETE", f"/v1/agents/{b_agent['id']}/conversations/{conv['id']}", None),
    ]
    for method, path, body in calls:
        r = await client.request(method, path, headers=b.token_auth, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    # everything of A's is still there, unchanged
    assert (await client.get(f"/v1/agents/{agent['id']}/profile", headers=a.token_auth)).json()["display_name"] == "A"
    assert (await client.get(f"/v1/agent-templates/{tpl['id']}", headers=a.token_auth)).status_code == 200
    assert (await client.get(f"{rules}/{rule['id']}", headers=a.token_auth)).json()["priority"] == 100
    assert (await client.get(f"{convs}/{conv['id']}", headers=a.token_auth)).json()["external_conversation_id"] == "e"
    # B's list of templates does not show A's
    assert tpl["id"] not in (await client.get("/v1/agent-templates", headers=b.token_auth)).text


async def test_agents_routes_name_the_missing_scope(client):
    t = await signup(client)
    agent = await new_agent(client, t)
    nothing = bearer((await make_token(client, t, ["org:read"]))["token"])
    read_only = bearer((await make_token(client, t, ["agents:read"]))["token"])
    aid, some = agent["id"], str(uuid.uuid4())
    reads = [("GET", f"/v1/agents/{aid}/profile"), ("GET", "/v1/agent-templates"),
             ("GET", f"/v1/agent-templates/{some}"), ("GET", f"/v1/agents/{aid}/email-rules"),
             ("GET", f"/v1/agents/{aid}/email-rules/{some}"), ("GET", f"/v1/agents/{aid}/conversations"),
             ("GET", f"/v1/agents/{aid}/conversations/{some}")]
    writes = [("PUT", f"/v1/agents/{aid}/profile", {"display_name": "x"}),
              ("POST", "/v1/agent-templates", {"slug": "s", "name": "n", "category": "c"}),
              ("PATCH", f"/v1/agent-templates/{some}", {"name": "n"}), ("DELETE", f"/v1/agent-templates/{some}", None),
              ("POST", f"/v1/agents/{aid}/email-rules", {"direction": "inbound", "pattern": "x", "action": "reply"}),
              ("PATCH", f"/v1/agents/{aid}/email-rules/{some}", {"priority": 1}),
              ("DELETE", f"/v1/agents/{aid}/email-rules/{some}", None),
              ("POST", f"/v1/agents/{aid}/conversations", {"conversation_key": "k", "external_conversation_id": "e"}),
              ("PATCH", f"/v1/agents/{aid}/conversations/{some}", {"external_conversation_id": "e"}),
              ("DELETE", f"/v1/agents/{aid}/conversations/{some}", None)]
    for method, path in reads:
        r = await client.request(method, path, headers=nothing)
        assert r.status_code == 403 and r.json()["missing_scope"] == "agents:read", (method, path, r.text)
        assert "agents:read" in r.json()["detail"]
        assert (await client.request(method, path, headers=read_only)).status_code in (200, 404)
    for method, path, body in writes:
        r = await client.request(method, path, headers=read_only, json=body)
        assert r.status_code == 403 and r.json()["missing_scope"] == "agents:write", (method, path, r.text)


async def test_project_restricted_token_reads_templates_but_cannot_change_them(client):
    t = await signup(client)
    tpl = await new_template(client, t)
    restricted = bearer((await make_token(client, t, ["agents:write", "org:read"], project_ids=[t.project_id]))["token"])
    assert (await client.get(f"/v1/agent-templates/{tpl['id']}", headers=restricted)).status_code == 200
    r = await client.post("/v1/agents", headers=restricted,
                          json={"project_id": t.project_id, "name": "r", "template_id": tpl["id"]})
    assert r.status_code == 201 and r.json()["type"] == "support", r.text
    r = await client.patch(f"/v1/agent-templates/{tpl['id']}", headers=restricted, json={"name": "changed"})
    assert r.status_code == 403 and "project-restricted" in r.json()["detail"], r.text
    r = await client.delete(f"/v1/agent-templates/{tpl['id']}", headers=restricted)
    assert r.status_code == 403, r.text
    r = await client.post("/v1/agent-templates", headers=restricted, json={"slug": "r", "name": "n", "category": "c"})
    assert r.status_code == 403, r.text
    assert (await client.get(f"/v1/agent-templates/{tpl['id']}", headers=t.token_auth)).json()["name"] == "Support bot"
