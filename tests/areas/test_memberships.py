"""Project and organization membership: roles and their scopes, changes that apply to the
member's very next request, what a project member (even a project admin) can and cannot
reach, the owner rules, and login restricted to some projects."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tenant_api.auth.credentials import token_hash
from tenant_api.scopes import PROJECT_ROLE_SCOPES, ROLE_SCOPES, expand
from tenant_api.auth.mail_secrets import invite_hash
from tests.support.tenants import bearer, signup
from tests.support.members_flow import invite, join, login, new_agent, new_project


async def test_project_role_scopes_match_the_database_and_are_nested(admin_conn):
    for role, scopes in PROJECT_ROLE_SCOPES.items():
        assert set(await admin_conn.fetchval("select auth.project_role_scopes($1)", role)) == set(scopes), role
    viewer, editor, admin = (expand(PROJECT_ROLE_SCOPES[r]) for r in ("viewer", "editor", "admin"))
    # Nested: the lowest of a user's roles is also the intersection of them (begin_request).
    assert viewer < editor < admin
    # Nothing organization-wide: no billing, no audit log, no organization changes.
    assert not {s for s in admin if s.split(":")[0] in ("billing", "audit")} and "org:write" not in admin
    assert admin <= expand(ROLE_SCOPES["admin"])


async def test_role_change_applies_to_the_next_request(client):
    alice, bob = await signup(client), await signup(client)
    p = alice.project_id
    bh = await join(client, alice, bob, p, "viewer")
    assert (await client.get("/v1/me", headers=bh)).json()["role"] == "project:viewer"
    assert (await client.get("/v1/agents", headers=bh)).status_code == 200
    r = await client.post("/v1/agents", headers=bh, json={"project_id": p, "name": "x"})
    assert r.status_code == 403 and r.json()["missing_scope"] == "agents:write"

    r = await client.patch(f"/v1/projects/{p}/members/{bob.user_id}", headers=alice.token_auth, json={"role": "editor"})
    assert r.status_code == 200 and r.json()["role"] == "editor" and r.json()["email"] == bob.email, r.text
    await new_agent(client, bh, p)  # the same session, now an editor

    r = await client.patch(f"/v1/projects/{p}/members/{bob.user_id}", headers=alice.token_auth, json={"role": "viewer"})
    assert r.status_code == 200
    assert (await client.post("/v1/agents", headers=bh, json={"project_id": p, "name": "y"})).status_code == 403
    r = await client.patch(f"/v1/projects/{p}/members/{bob.user_id}", headers=alice.token_auth, json={"role": "owner"})
    assert r.status_code == 422


async def test_removal_applies_to_the_next_request_for_sessions_and_tokens(client, admin_conn):
    alice, bob = await signup(client), await signup(client)
    p1, p2 = alice.project_id, (await new_project(client, alice))["id"]
    await join(client, alice, bob, p1, "editor")
    bh = await join(client, alice, bob, p2, "editor")
    a2 = await new_agent(client, alice.token_auth, p2)
    r = await client.post("/v1/tokens", headers=bh, json={"name": "t", "scopes": ["agents:read", "org:read"]})
    assert r.status_code == 201 and sorted(r.json()["project_ids"]) == sorted([p1, p2])
    th = bearer(r.json()["token"])

    # Removed from p2: p2 is gone (404) on the very next request, p1 still works.
    assert (await client.delete(f"/v1/projects/{p2}/members/{bob.user_id}", headers=alice.token_auth)).status_code == 204
    for h in (bh, th):
        assert [p["id"] for p in (await client.get("/v1/projects", headers=h)).json()["items"]] == [p1]
        assert (await client.get(f"/v1/agents/{a2['id']}", headers=h)).status_code == 404
    assert (await client.delete(f"/v1/projects/{p2}/members/{bob.user_id}", headers=alice.token_auth)).status_code == 404

    # Removed from the last project: every credential of his there is refused (401).
    assert (await client.delete(f"/v1/projects/{p1}/members/{bob.user_id}", headers=alice.token_auth)).status_code == 204
    for h in (bh, th):
        r = await client.get("/v1/projects", headers=h)
        assert r.status_code == 401 and "no longer a member" in r.json()["detail"], r.text
    r = await client.post("/v1/auth/login", json={"email": bob.email, "password": bob.password,
                                                  "organization_id": alice.organization_id})
    assert r.status_code == 403
    # His own organization is untouched.
    assert (await client.get("/v1/projects", headers=bob.token_auth)).status_code == 200
    assert await admin_conn.fetchval(
        "select count(*) from token_audit_log where organization_id = $1 and table_name = 'project_membership'"
        " and action = 'DELETE'", uuid.UUID(alice.organization_id)) == 2


async def test_member_lists_show_emails_to_admins_and_to_co_members_only(client):
    alice, bob, carol = await signup(client), await signup(client), await signup(client)
    p1, p2 = alice.project_id, (await new_project(client, alice))["id"]
    bh = await join(client, alice, bob, p1, "editor")
    ch = await join(client, alice, carol, p2, "viewer")
    r = await client.get(f"/v1/projects/{p1}/members", headers=alice.token_auth)
    assert [(m["user_id"], m["email"], m["role"]) for m in r.json()["items"]] == [(bob.user_id, bob.email, "editor")]
    assert [m["email"] for m in (await client.get(f"/v1/projects/{p1}/members", headers=bh)).json()["items"]] == [bob.email]
    assert (await client.get(f"/v1/projects/{p1}/members", headers=ch)).status_code == 404
    assert (await client.get(f"/v1/projects/{p1}/members/{bob.user_id}", headers=ch)).status_code == 404
    r = await client.get(f"/v1/projects/{p2}/members/{carol.user_id}", headers=ch)
    assert r.status_code == 200 and r.json()["email"] == carol.email
    # Pagination, like every list.
    alice2 = await join(client, alice, await signup(client), p1, "viewer")
    del alice2
    r = await client.get(f"/v1/projects/{p1}/members", headers=alice.token_auth, params={"limit": 1})
    page2 = await client.get(f"/v1/projects/{p1}/members", headers=alice.token_auth,
                             params={"limit": 1, "cursor": r.json()["next_cursor"]})
    assert len(r.json()["items"]) == 1 and len(page2.json()["items"]) == 1 and page2.json()["next_cursor"] is None
    assert r.json()["items"][0]["user_id"] != page2.json()["items"][0]["user_id"]


async def test_a_project_admin_manages_their_project_and_nothing_of_the_organization(client):
    alice, bob, carol = await signup(client), await signup(client), await signup(client)
    p1, p2 = alice.project_id, (await new_project(client, alice))["id"]
    bh = await join(client, alice, bob, p1, "admin")
    me = (await client.get("/v1/me", headers=bh)).json()
    assert me["role"] == "project:admin" and "members:write" in me["scopes"]

    # His own project: invite, change roles, remove.
    inv = await invite(client, bh, p1, carol.email, "viewer")
    assert (await client.post("/v1/invites/accept", headers=carol.session_auth,
                              json={"invite_token": inv["invite_token"]})).status_code == 201
    r = await client.patch(f"/v1/projects/{p1}/members/{carol.user_id}", headers=bh, json={"role": "editor"})
    assert r.status_code == 200
    # Another project of the organization: invisible.
    r = await client.post(f"/v1/projects/{p2}/invites", headers=bh, json={"email": "x@example.com", "role": "viewer"})
    assert r.status_code == 404
    assert (await client.get(f"/v1/projects/{p2}/members", headers=bh)).status_code == 404
    # The organization: its members, its tokens, its settings.
    assert (await client.get("/v1/organization/members", headers=bh)).json()["items"] == []
    r = await client.post("/v1/organization/members", headers=bh, json={"user_id": carol.user_id, "role": "admin"})
    assert r.status_code == 403
    r = await client.patch(f"/v1/organization/members/{alice.user_id}", headers=bh, json={"role": "member"})
    assert r.status_code == 403
    tokens = (await client.get("/v1/tokens", headers=bh)).json()["items"]
    assert {t["user_id"] for t in tokens} == {bob.user_id}
    assert (await client.delete(f"/v1/tokens/{alice.token_id}", headers=bh)).status_code == 404
    assert (await client.get("/v1/tokens", headers=alice.token_auth)).status_code == 200  # still valid
    assert (await client.patch("/v1/organization", headers=bh, json={"name": "mine"})).status_code == 403
    assert (await client.post("/v1/workspaces", headers=bh, json={"name": "w"})).status_code == 403
    assert (await client.post("/v1/projects", headers=bh,
                              json={"workspace_id": alice.workspace_id, "name": "new"})).status_code == 403


async def test_different_roles_in_different_projects_use_the_lowest_unless_login_narrows(client):
    alice, bob, mallory = await signup(client), await signup(client), await signup(client)
    p1, p2 = alice.project_id, (await new_project(client, alice))["id"]
    await join(client, alice, bob, p1, "admin")
    both = await join(client, alice, bob, p2, "viewer")
    me = (await client.get("/v1/me", headers=both)).json()
    assert sorted(me["project_ids"]) == sorted([p1, p2]) and me["role"] == "project:viewer"
    assert set(me["scopes"]) == expand(PROJECT_ROLE_SCOPES["viewer"])
    # Not an admin in p1 through a credential that also covers p2, where he is a viewer.
    r = await client.post(f"/v1/projects/{p1}/invites", headers=both, json={"email": "x@example.com", "role": "viewer"})
    assert r.status_code == 403 and r.json()["missing_scope"] == "members:write"

    # Logged in for p1 only: admin there, p2 out of sight.
    only_p1 = await login(client, bob, alice.organization_id, project_ids=[p1])
    me = (await client.get("/v1/me", headers=only_p1)).json()
    assert me["project_ids"] == [p1] and me["role"] == "project:admin"
    await invite(client, only_p1, p1, f"{uuid.uuid4().hex[:8]}@example.com")
    assert [p["id"] for p in (await client.get("/v1/projects", headers=only_p1)).json()["items"]] == [p1]

    # Only projects he may enter; an organization owner may narrow to any of hers.
    for body in ({"organization_id": alice.organization_id, "project_ids": [mallory.project_id]},
                 {"organization_id": alice.organization_id, "project_ids": [p1, mallory.project_id]}):
        r = await client.post("/v1/auth/login", json={"email": bob.email, "password": bob.password, **body})
        assert r.status_code == 403, r.text
    narrowed = await login(client, alice, project_ids=[p2])
    assert [p["id"] for p in (await client.get("/v1/projects", headers=narrowed)).json()["items"]] == [p2]
    r = await client.post("/v1/auth/login", json={"email": alice.email, "password": alice.password,
                                                  "project_ids": [mallory.project_id]})
    assert r.status_code == 403


async def test_organization_members_and_the_owner_rules(client):
    alice, bob, carol = await signup(client), await signup(client), await signup(client)
    org = alice.organization_id
    r = await client.get("/v1/organization/members", headers=alice.token_auth)
    assert [(m["user_id"], m["role"]) for m in r.json()["items"]] == [(alice.user_id, "owner")]
    # The last owner: neither removed nor demoted.
    r = await client.delete(f"/v1/organization/members/{alice.user_id}", headers=alice.token_auth)
    assert r.status_code == 409 and "last owner" in r.json()["detail"]
    r = await client.patch(f"/v1/organization/members/{alice.user_id}", headers=alice.token_auth, json={"role": "admin"})
    assert r.status_code == 409

    # Project members can be made organization members; strangers cannot be added.
    await join(client, alice, bob, alice.project_id, "viewer")
    await join(client, alice, carol, alice.project_id, "viewer")
    stranger = await signup(client)
    for user_id in (stranger.user_id, str(uuid.uuid4())):
        r = await client.post("/v1/organization/members", headers=alice.token_auth, json={"user_id": user_id, "role": "member"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "user_id"
    r = await client.post("/v1/organization/members", headers=alice.token_auth, json={"user_id": bob.user_id, "role": "admin"})
    assert r.status_code == 201 and r.json()["email"] == bob.email, r.text
    r = await client.post("/v1/organization/members", headers=alice.token_auth, json={"user_id": bob.user_id, "role": "admin"})
    assert r.status_code == 409
    bh = await login(client, bob, org)
    me = (await client.get("/v1/me", headers=bh)).json()
    assert me["role"] == "admin" and me["project_ids"] is None

    # An admin cannot make, change or remove an owner.
    r = await client.post("/v1/organization/members", headers=bh, json={"user_id": carol.user_id, "role": "owner"})
    assert r.status_code == 403
    r = await client.post("/v1/organization/members", headers=bh, json={"user_id": carol.user_id, "role": "member"})
    assert r.status_code == 201
    for method, body in (("PATCH", {"role": "admin"}), ("DELETE", None)):
        r = await client.request(method, f"/v1/organization/members/{alice.user_id}", headers=bh, json=body)
        assert r.status_code == 403 and "owner" in r.json()["detail"], r.text

    # Two owners demoting each other at once: exactly one succeeds, one owner remains.
    assert (await client.patch(f"/v1/organization/members/{bob.user_id}", headers=alice.token_auth,
                               json={"role": "owner"})).status_code == 200
    results = await asyncio.gather(
        client.patch(f"/v1/organization/members/{bob.user_id}", headers=alice.token_auth, json={"role": "admin"}),
        client.patch(f"/v1/organization/members/{alice.user_id}", headers=bh, json={"role": "admin"}))
    # The loser is refused either as the last owner's demoter (409) or, if Alice's change
    # committed before his request began, as no longer an owner (403).
    codes = sorted(r.status_code for r in results)
    assert codes in ([200, 409], [200, 403]), [r.text for r in results]
    owners = [m for m in (await client.get("/v1/organization/members", headers=bh)).json()["items"]
              if m["role"] == "owner"]
    assert len(owners) == 1

    # Removed from the organization: out of all of it on the next request, project
    # memberships included (Carol had joined a project before).
    ch = await login(client, carol, org)
    assert (await client.get("/v1/me", headers=ch)).json()["role"] == "member"
    r = await client.delete(f"/v1/organization/members/{carol.user_id}", headers=bh)
    assert r.status_code == 204
    assert (await client.get("/v1/me", headers=ch)).status_code == 401
    assert (await client.get(f"/v1/projects/{alice.project_id}/members/{carol.user_id}",
                             headers=alice.token_auth)).status_code == 404


async def test_other_organizations_ids_are_404_and_scopes_are_checked(client):
    alice, bob, mallory = await signup(client), await signup(client), await signup(client)
    p = alice.project_id
    await join(client, alice, bob, p, "viewer")
    routes = [("GET", f"/v1/projects/{p}/members", None), ("GET", f"/v1/projects/{p}/members/{bob.user_id}", None),
              ("PATCH", f"/v1/projects/{p}/members/{bob.user_id}", {"role": "editor"}),
              ("DELETE", f"/v1/projects/{p}/members/{bob.user_id}", None)]
    for method, path, body in routes:
        r = await client.request(method, path, headers=mallory.token_auth, json=body)
        assert r.status_code == 404, (method, path, r.text)
    for method, body in (("GET", None), ("PATCH", {"role": "member"}), ("DELETE", None)):
        r = await client.request(method, f"/v1/organization/members/{alice.user_id}", headers=mallory.token_auth, json=body)
        assert r.status_code == 404, (method, r.text)
    assert (await client.get(f"/v1/projects/{p}/members", headers=alice.token_auth)).status_code == 200  # (not vacuous)

    r = await client.post("/v1/tokens", headers=alice.session_auth, json={"name": "r", "scopes": ["members:read", "org:read"]})
    reader = bearer(r.json()["token"])
    for method, path, body in routes[2:] + [("DELETE", f"/v1/organization/members/{alice.user_id}", None)]:
        r = await client.request(method, path, headers=reader, json=body)
        assert r.status_code == 403 and r.json()["missing_scope"] == "members:write", (method, path)
    r = await client.post("/v1/tokens", headers=alice.session_auth, json={"name": "n", "scopes": ["agents:read"]})
    r = await client.get("/v1/organization/members", headers=bearer(r.json()["token"]))
    assert r.status_code == 403 and r.json()["missing_scope"] == "members:read"


async def test_accept_invite_acts_only_for_the_requests_own_user(client, api_conn):
    """The definer function takes the user id from the API but checks it against the
    request context begin_request set: a handler bug cannot accept for someone else."""
    alice, bob, carol = await signup(client), await signup(client), await signup(client)
    inv = await invite(client, alice.token_auth, alice.project_id, carol.email)
    async with api_conn.transaction():
        assert await api_conn.fetchval("select status from auth.begin_request($1, null, null, 'test')",
                                       token_hash(bob.token)) == "ok"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.fetch("select * from auth.accept_invite($1, $2, false)",
                                 invite_hash(inv["invite_token"]), uuid.UUID(carol.user_id))
    # No context at all: refused as well.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch("select * from auth.accept_invite($1, $2, false)",
                             invite_hash(inv["invite_token"]), uuid.UUID(carol.user_id))
