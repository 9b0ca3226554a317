"""Issue 11's rules over HTTP: verified email and squatters, organization invites,
/v1/me and /v1/me/organizations, auditors' own tokens, service accounts."""

from __future__ import annotations

import uuid

import pytest

from tenant_api.auth import mail_secrets as tokens
from tests.support.tenants import TEST_JWT_SECRET, bearer, make_token, signup, verification_secret
from tests.support.members_flow import join, login, new_agent

pytestmark = pytest.mark.asyncio


async def mail_secret(admin_conn, invite_id: str) -> str:
    """The secret of the invite's latest mail, as its link carries it (the invitee's mailbox)."""
    nonce = await admin_conn.fetchval("select nonce from invite_outbox where invite_id = $1 order by id desc limit 1",
                                      uuid.UUID(invite_id))
    return tokens.derive(tokens.mail_key(TEST_JWT_SECRET), nonce)


async def org_invite(client, admin, email: str, role: str = "member") -> dict:
    r = await client.post("/v1/organization/invites", headers=admin.token_auth, json={"email": email, "role": role})
    assert r.status_code == 201, r.text
    return r.json()


# --- verified email and squatters ------------------------------------------------------


async def test_a_squatter_gains_no_invite_and_never_blocks_the_owner(client, admin_conn):
    alice = await signup(client)
    victim = f"victim{uuid.uuid4().hex[:8]}@example.com"
    r = await client.post("/v1/auth/signup", json={"email": victim, "password": "squatter-password",
                                                   "display_name": "Mallory"})
    assert r.status_code == 201 and r.json()["user"]["email_verified"] is False
    mallory = bearer(r.json()["session"]["access_token"])
    # While held, the owner cannot sign up the usual way...
    r = await client.post("/v1/auth/signup", json={"email": victim, "password": "owner-password",
                                                   "display_name": "Owner"})
    assert r.status_code == 409
    inv = await org_invite(client, alice, victim, "admin")
    # ...and the squatter, holding the address, can neither accept nor decline with the
    # secret the inviter saw (it may be forwarded anywhere: it proves no mailbox).
    for action in ("accept", "decline"):
        r = await client.post(f"/v1/invites/{action}", headers=mallory, json={"invite_token": inv["invite_token"]})
        assert r.status_code == 403 and "not verified" in r.json()["detail"], r.text
    # ...nor sign up with it.
    r = await client.post("/v1/invites/signup", json={"invite_token": inv["invite_token"], "password": "x" * 12,
                                                      "display_name": "M"})
    assert r.status_code == 403
    # The owner reads the mail: its secret signs them up verified, releases the squatter's
    # hold, accepts, and opens a session in the inviting organization.
    secret = await mail_secret(admin_conn, inv["id"])
    r = await client.post("/v1/invites/preview", json={"invite_token": secret})
    assert r.status_code == 200 and r.json()["from_mail"] is True and r.json()["account"] == "unverified"
    r = await client.post("/v1/invites/signup", json={"invite_token": secret, "password": "owner-password",
                                                      "display_name": "Owner"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["membership"]["role"] == "admin" and body["session"]["organization_id"] == alice.organization_id
    me = (await client.get("/v1/me", headers=bearer(body["session"]["access_token"]))).json()
    assert me["user"]["email"] == victim and me["user"]["email_verified"] is True and me["role"] == "admin"
    # The squatter's account keeps its own organization but not the address.
    r = await client.get("/v1/me", headers=mallory)
    assert r.status_code == 200 and r.json()["user"]["email"].endswith("@released.invalid")
    r = await client.post("/v1/auth/login", json={"email": victim, "password": "squatter-password"})
    assert r.status_code == 401
    # The mail's secret is spent: used once.
    r = await client.post("/v1/invites/signup", json={"invite_token": secret, "password": "y" * 12,
                                                      "display_name": "Again"})
    assert r.status_code in (409, 410)


async def test_an_unverified_hold_ends_and_a_new_signup_claims_the_address(client, admin_conn):
    email = f"late{uuid.uuid4().hex[:8]}@example.com"
    first = await client.post("/v1/auth/signup", json={"email": email, "password": "first-password",
                                                       "display_name": "First"})
    assert first.status_code == 201
    await admin_conn.execute("update user_account set email_hold_until = now() - interval '1 second' where id = $1",
                             uuid.UUID(first.json()["user"]["id"]))
    r = await client.post("/v1/auth/signup", json={"email": email, "password": "second-password",
                                                   "display_name": "Second"})
    assert r.status_code == 201, r.text
    assert (await client.post("/v1/auth/login", json={"email": email, "password": "second-password"})).status_code == 200
    assert (await client.post("/v1/auth/login", json={"email": email, "password": "first-password"})).status_code == 401
    # The first account's verification link no longer verifies anything.
    old = await verification_secret(first.json()["user"]["id"])
    assert (await client.post("/v1/auth/verify", json={"token": old})).status_code == 404


async def test_a_verified_account_is_never_taken_over(client, admin_conn):
    owner = await signup(client)  # verified
    await admin_conn.execute("update user_account set email_hold_until = now() - interval '1 day' where id = $1",
                             uuid.UUID(owner.user_id))
    r = await client.post("/v1/auth/signup", json={"email": owner.email.upper(), "password": "attacker-password",
                                                   "display_name": "Attacker"})
    assert r.status_code == 409
    # Not even with an invite's mail secret (the inviter could never have it, but still).
    alice = await signup(client)
    inv = await org_invite(client, alice, owner.email)
    r = await client.post("/v1/invites/signup", json={"invite_token": await mail_secret(admin_conn, inv["id"]),
                                                      "password": "attacker-password", "display_name": "A"})
    assert r.status_code == 409
    assert (await client.post("/v1/auth/login", json={"email": owner.email, "password": owner.password})
            ).status_code == 200


async def test_verification_link_once_resend_replaces_it_and_ends_with_a_session(client):
    t = await signup(client, verified=False)
    first = await verification_secret(t.user_id)
    r = await client.post("/v1/me/verification", headers=t.session_auth)
    assert r.status_code == 202 and r.json()["email"] == t.email
    second = await verification_secret(t.user_id)
    assert first != second
    assert (await client.post("/v1/auth/verify", json={"token": first})).status_code == 404
    assert (await client.post("/v1/auth/verify", json={"token": "tver_nonsense"})).status_code == 422
    r = await client.post("/v1/auth/verify", json={"token": second})
    assert r.status_code == 200 and r.json()["email_verified"] is True
    me = (await client.get("/v1/me", headers=bearer(r.json()["session"]["access_token"]))).json()
    assert me["user"]["email_verified"] is True and me["organization_id"] == t.organization_id
    assert (await client.post("/v1/auth/verify", json={"token": second})).status_code == 404
    assert (await client.post("/v1/me/verification", headers=t.session_auth)).status_code == 409


# --- organization invites ---------------------------------------------------------------


async def test_organization_invite_lifecycle(client, admin_conn):
    alice, bob = await signup(client), await signup(client)
    inv = await org_invite(client, alice, bob.email, "auditor")
    assert inv["project_id"] is None and inv["invite_url"].endswith(f"#invite_token={inv['invite_token']}")
    r = await client.post("/v1/organization/invites", headers=alice.token_auth, json={"email": bob.email, "role": "member"})
    assert r.status_code == 409
    r = await client.post("/v1/organization/invites", headers=alice.token_auth, json={"email": bob.email, "role": "owner"})
    assert r.status_code == 422  # no owner invites: owners make owners by hand
    r = await client.post("/v1/organization/invites", headers=alice.token_auth,
                          json={"email": bob.email, "role": "member", "resend": True})
    assert r.status_code == 200 and r.json()["role"] == "member" and r.json()["send_count"] == 2
    # The earlier secret stopped working; the list shows the invite, project lists do not.
    assert (await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": inv["invite_token"]})
            ).status_code == 404
    listed = (await client.get("/v1/organization/invites", headers=alice.token_auth)).json()["items"]
    assert [i["id"] for i in listed] == [inv["id"]]
    assert (await client.get(f"/v1/projects/{alice.project_id}/invites/{inv['id']}", headers=alice.token_auth)
            ).status_code == 404
    # A project-restricted credential cannot manage them.
    narrow = await make_token(client, alice, ["members:write"], project_ids=[alice.project_id])
    assert (await client.get("/v1/organization/invites", headers=bearer(narrow["token"]))).status_code == 403
    # Accept: an organization membership, audited in the inviting organization.
    r = await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": r.json()["invite_token"]})
    assert r.status_code == 201 and r.json()["project_id"] is None and r.json()["role"] == "member"
    members = (await client.get("/v1/organization/members", headers=alice.token_auth)).json()["items"]
    assert {m["user_id"]: m["role"] for m in members}[bob.user_id] == "member"
    assert (await client.get(f"/v1/organization/invites/{inv['id']}", headers=alice.token_auth)).json()["status"] == "accepted"
    row = await admin_conn.fetchrow(
        "select user_id, token_id from token_audit_log where organization_id = $1 and table_name = "
        "'organization_membership' and action = 'INSERT' order by id desc limit 1", uuid.UUID(alice.organization_id))
    assert str(row["user_id"]) == bob.user_id
    # Revoke of an accepted invite is refused; a new invite to a member is a 409.
    assert (await client.delete(f"/v1/organization/invites/{inv['id']}", headers=alice.token_auth)).status_code == 409
    assert (await client.post("/v1/organization/invites", headers=alice.token_auth,
                              json={"email": bob.email, "role": "member"})).status_code == 409


# --- /v1/me and /v1/me/organizations -----------------------------------------------------


async def test_me_says_what_the_credential_may_do(client):
    t = await signup(client)
    me = (await client.get("/v1/me", headers=t.session_auth)).json()
    assert me["role"] == "owner" and me["narrowed"] is False and me["principal"] == "user"
    narrow = await make_token(client, t, ["agents:read"], project_ids=[t.project_id])
    me = (await client.get("/v1/me", headers=bearer(narrow["token"]))).json()
    assert me["role"] == "owner" and me["narrowed"] is True
    assert me["scopes"] == ["agents:read"] and me["project_ids"] == [t.project_id]
    assert me["token"]["scopes"] == ["agents:read"] and me["token"]["project_ids"] == [t.project_id]


async def test_my_organizations_lists_organizations_and_project_only_memberships(client):
    alice, bob = await signup(client), await signup(client)
    await join(client, alice, bob, alice.project_id, "viewer")
    places = (await client.get("/v1/me/organizations", headers=bob.session_auth)).json()["items"]
    by_org = {p["organization_id"]: p for p in places}
    assert by_org[bob.organization_id]["role"] == "owner" and by_org[bob.organization_id]["current"] is True
    there = by_org[alice.organization_id]
    assert there["role"] is None and there["current"] is False
    assert there["projects"] == [{"id": alice.project_id, "name": "Default", "role": "viewer"}]
    assert set(by_org) == {bob.organization_id, alice.organization_id}


# --- auditors' own tokens ------------------------------------------------------------------


async def test_an_auditor_mints_tokens_within_their_own_scopes(client, admin_conn):
    alice, carol = await signup(client), await signup(client)
    inv = await org_invite(client, alice, carol.email, "auditor")
    assert (await client.post("/v1/invites/accept", headers=carol.session_auth, json={"invite_token": inv["invite_token"]})
            ).status_code == 201
    session = await login(client, carol, alice.organization_id)
    r = await client.post("/v1/tokens", headers=session, json={"name": "export", "scopes": ["audit:read",
                                                                                           "agents:read"]})
    assert r.status_code == 201, r.text
    token = r.json()
    assert token["user_id"] == carol.user_id
    assert (await client.get("/v1/audit/events", headers=bearer(token["token"]))).status_code == 200
    for scopes in (["agents:write"], ["members:write"], ["billing:write"]):
        r = await client.post("/v1/tokens", headers=session, json={"name": "x", "scopes": scopes})
        assert r.status_code == 403, (scopes, r.text)
    # Another user's token is none of their business (not even visible for revoking).
    r = await client.delete(f"/v1/tokens/{alice.token_id}", headers=session)
    assert r.status_code in (403, 404)
    assert (await client.get("/v1/me", headers=alice.token_auth)).status_code == 200
    row = await admin_conn.fetchrow("select user_id from token_audit_log where organization_id = $1 and row_id = $2",
                                    uuid.UUID(alice.organization_id), uuid.UUID(token["id"]))
    assert str(row["user_id"]) == carol.user_id


# --- service accounts -----------------------------------------------------------------------


async def test_service_account_lifecycle(client, admin_conn):
    owner, admin = await signup(client), await signup(client)
    inv = await org_invite(client, owner, admin.email, "admin")
    assert (await client.post("/v1/invites/accept", headers=admin.session_auth, json={"invite_token": inv["invite_token"]})
            ).status_code == 201
    admin_h = await login(client, admin, owner.organization_id)
    r = await client.post("/v1/service-accounts", headers=admin_h,
                          json={"name": "ci-bot", "role": "member", "project_ids": [owner.project_id]})
    assert r.status_code == 201, r.text
    sa = r.json()
    assert sa["role"] == "member" and sa["project_ids"] == [owner.project_id]
    bad = await client.post("/v1/service-accounts", headers=admin_h,
                            json={"name": "x", "role": "auditor", "scopes": ["agents:write"]})
    assert bad.status_code == 422 and "beyond the role" in bad.text
    assert (await client.post("/v1/service-accounts", headers=admin_h, json={"name": "x", "role": "owner"})
            ).status_code == 422
    r = await client.post(f"/v1/service-accounts/{sa['id']}/tokens", headers=admin_h,
                          json={"name": "ci", "scopes": ["org:read", "agents:write"]})
    assert r.status_code == 201, r.text
    sa_token = bearer(r.json()["token"])
    assert r.json()["user_id"] == sa["user_id"] and r.json()["project_ids"] == [owner.project_id]
    me = (await client.get("/v1/me", headers=sa_token)).json()
    assert me["principal"] == "service_account" and me["role"] == "member" and me["narrowed"] is True
    agent = await new_agent(client, sa_token, owner.project_id)
    row = await admin_conn.fetchrow("select user_id, token_id from token_audit_log where organization_id = $1"
                                    " and row_id = $2 and action = 'INSERT'", uuid.UUID(owner.organization_id),
                                    uuid.UUID(agent["id"]))
    assert str(row["user_id"]) == sa["user_id"] and str(row["token_id"]) == r.json()["id"]
    # Not a person: no login, not among the members.
    members = (await client.get("/v1/organization/members", headers=owner.token_auth)).json()["items"]
    assert sa["user_id"] not in {m["user_id"] for m in members}
    # The admin who made it leaves: its token keeps working.
    assert (await client.delete(f"/v1/organization/members/{admin.user_id}", headers=owner.token_auth)).status_code == 204
    assert (await client.get("/v1/me", headers=sa_token)).status_code == 200
    # A member (no members:write) cannot manage service accounts; a restricted admin neither.
    narrow = await make_token(client, owner, ["members:write"], project_ids=[owner.project_id])
    assert (await client.post("/v1/service-accounts", headers=bearer(narrow["token"]),
                              json={"name": "y", "role": "member"})).status_code == 403
    # The role applies at the next request.
    r = await client.patch(f"/v1/service-accounts/{sa['id']}", headers=owner.token_auth, json={"role": "auditor"})
    assert r.status_code == 200 and r.json()["role"] == "auditor"
    r = await client.post("/v1/agents", headers=sa_token, json={"project_id": owner.project_id, "name": "no"})
    assert r.status_code == 403
    # Deleting it ends its tokens at once.
    assert (await client.delete(f"/v1/service-accounts/{sa['id']}", headers=owner.token_auth)).status_code == 204
    assert (await client.get("/v1/me", headers=sa_token)).status_code == 401
    assert (await client.get(f"/v1/service-accounts/{sa['id']}", headers=owner.token_auth)).status_code == 404


async def test_no_one_mints_for_another_organizations_service_account(client):
    a, b = await signup(client), await signup(client)
    sa = (await client.post("/v1/service-accounts", headers=a.token_auth, json={"name": "a-bot", "role": "member"})).json()
    r = await client.post(f"/v1/service-accounts/{sa['id']}/tokens", headers=b.token_auth, json={"name": "steal"})
    assert r.status_code == 404
    assert (await client.get(f"/v1/service-accounts/{sa['id']}", headers=b.token_auth)).status_code == 404
