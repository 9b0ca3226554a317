"""Credentials: scopes, expiry, revocation, rotation, no escalation, project restriction,
malformed and forged credentials, sessions, login and signup."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import jwt
import pytest

from tenant_api.auth.credentials import TOKEN_PREFIX, new_api_token
from tests.support.tenants import Tenant, bearer, make_token, signup
from tests.support.security import as_request, assert_problem, attempt, settle_usage, snapshot_all

ALL_OWNER = ["agents:write", "audit:read", "billing:write", "calls:write", "conversations:write", "desktops:write",
             "members:write", "notifications:write", "org:write", "services:write", "tasks:write", "tokens:write"]


@pytest.fixture(scope="module")
async def tenant(client) -> Tenant:
    return await signup(client, f"tok{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
async def projects(client, tenant) -> dict[str, str]:
    """P (signup's default project) and Q (a second project of the same organization),
    each with one agent."""
    r = await client.post("/v1/projects", headers=tenant.token_auth, json={"workspace_id": tenant.workspace_id, "name": "Q"})
    assert r.status_code == 201, r.text
    q = r.json()["id"]
    out = {"P": tenant.project_id, "Q": q}
    for name, project in (("aP", tenant.project_id), ("aQ", q)):
        r = await client.post("/v1/agents", headers=tenant.token_auth, json={"project_id": project, "name": name})
        assert r.status_code == 201, r.text
        out[name] = r.json()["id"]
    return out


def session_claims(tenant: Tenant) -> dict:
    return jwt.decode(tenant.session, options={"verify_signature": False})


# --- scopes ----------------------------------------------------------------------------


async def test_missing_scope_is_403_naming_it(client, tenant):
    tok = await make_token(client, tenant, ["agents:read"])
    h = bearer(tok["token"])
    assert (await client.get("/v1/agents", headers=h)).status_code == 200  # what it has works
    body = assert_problem(await client.post("/v1/agents", headers=h, json={"project_id": tenant.project_id, "name": "x"}),
                          403, "agents:write")
    assert body["missing_scope"] == "agents:write"
    body = assert_problem(await client.get("/v1/workspaces", headers=h), 403, "org:read")
    assert body["missing_scope"] == "org:read"


async def test_unknown_scope_is_422(client, tenant):
    for scopes in (["agents:admin"], ["agents:read", "root"], [""]):
        r = await client.post("/v1/tokens", headers=tenant.token_auth, json={"name": "x", "scopes": scopes})
        assert_problem(r, 422)
    body = (await client.post("/v1/tokens", headers=tenant.token_auth, json={"name": "x", "scopes": ["agents:admin"]})).json()
    assert body["errors"][0]["field"] == "scopes[0]"  # the Scope enum names the element


# --- expiry, revocation, rotation ------------------------------------------------------


@pytest.mark.parametrize("expires_at", [
    lambda now: (now - dt.timedelta(seconds=5)).isoformat(),  # the near past
    lambda now: (now + dt.timedelta(days=400)).isoformat(),  # beyond the maximum
    lambda now: (now + dt.timedelta(days=1)).replace(tzinfo=None).isoformat(),  # no time zone
])
async def test_bad_expires_at_is_422(client, tenant, expires_at):
    r = await client.post("/v1/tokens", headers=tenant.token_auth,
                          json={"name": "x", "scopes": ["agents:read"], "expires_at": expires_at(dt.datetime.now(dt.UTC))})
    body = assert_problem(r, 422, "expires_at")
    assert body["errors"][0]["field"] == "expires_at"


async def test_expired_token_is_401(client, tenant, admin_conn):
    tok = await make_token(client, tenant, ["agents:read"])
    assert (await client.get("/v1/me", headers=bearer(tok["token"]))).status_code == 200
    # (expires_at <= created_at + 366 days is a check constraint; the past satisfies it)
    await admin_conn.execute("update platform_token set expires_at = now() - interval '1 second' where id = $1",
                             uuid.UUID(tok["id"]))
    assert_problem(await client.get("/v1/me", headers=bearer(tok["token"])), 401, "expired")


async def test_revoked_token_is_401(client, tenant):
    tok = await make_token(client, tenant, ["agents:read"])
    h = bearer(tok["token"])
    assert (await client.get("/v1/agents", headers=h)).status_code == 200
    r = await client.delete(f"/v1/tokens/{tok['id']}", headers=tenant.token_auth)
    assert r.status_code == 204, r.text
    assert_problem(await client.get("/v1/agents", headers=h), 401, "revoked")
    assert (await client.get(f"/v1/tokens/{tok['id']}", headers=tenant.token_auth)).json()["revoked_at"] is not None
    # a revoked token cannot be rotated back to life
    assert_problem(await client.post(f"/v1/tokens/{tok['id']}/rotate", headers=tenant.token_auth), 409)


async def test_rotation_replaces_the_secret(client, tenant):
    tok = await make_token(client, tenant, ["agents:read"])
    r = await client.post(f"/v1/tokens/{tok['id']}/rotate", headers=tenant.token_auth)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["id"] == tok["id"] and new["token"] != tok["token"] and new["prefix"] == new["token"][:11]
    assert_problem(await client.get("/v1/agents", headers=bearer(tok["token"])), 401)
    assert (await client.get("/v1/agents", headers=bearer(new["token"]))).status_code == 200
    # sessions are not rotated
    sid = session_claims(tenant)["sid"]
    assert_problem(await client.post(f"/v1/tokens/{sid}/rotate", headers=tenant.token_auth), 409)


# --- no escalation ---------------------------------------------------------------------


async def test_token_cannot_grant_a_scope_it_lacks(client, tenant):
    tok = await make_token(client, tenant, ["agents:read", "tokens:write"])
    h = bearer(tok["token"])
    body = assert_problem(await client.post("/v1/tokens", headers=h, json={"name": "x", "scopes": ["agents:write"]}),
                          403, "agents:write")
    assert body["missing_scope"] == "agents:write"
    r = await client.post("/v1/tokens", headers=h, json={"name": "x", "scopes": ["agents:read"]})
    assert r.status_code == 201, r.text  # control: what it has, it may grant


async def test_restricted_token_cannot_grant_another_project(client, tenant, projects):
    tok = await make_token(client, tenant, ["agents:read", "tokens:write"], project_ids=[projects["P"]])
    h = bearer(tok["token"])
    assert_problem(await client.post("/v1/tokens", headers=h,
                                     json={"name": "x", "scopes": ["agents:read"], "project_ids": [projects["Q"]]}), 403)
    r = await client.post("/v1/tokens", headers=h, json={"name": "x", "scopes": ["agents:read"]})
    assert r.status_code == 201, r.text
    assert r.json()["project_ids"] == [projects["P"]]  # restricted tokens make restricted tokens


async def test_no_escalation_is_enforced_by_the_database(client, tenant, projects, api_conn):
    """Even a handler that forgot the check cannot insert a wider token (no_escalation policy)."""
    tok = await make_token(client, tenant, ["agents:read", "tokens:write"], project_ids=[projects["P"]])
    org, user = uuid.UUID(tenant.organization_id), uuid.UUID(tenant.user_id)
    insert = ("insert into platform_token (organization_id, user_id, kind, name, prefix, token_hash, scopes,"
              " project_ids, expires_at) values ($1, $2, 'api', 'x', 'tapi_x', $3, $4, $5, now() + interval '1 day')")
    async with as_request(api_conn, tok["token"]):
        assert await attempt(api_conn, insert, org, user, uuid.uuid4().bytes, ["agents:read"],
                             [uuid.UUID(projects["P"])]) == ("INSERT 0 1", None)  # control
        for scopes, project_ids in ((["agents:write"], [projects["P"]]), (["agents:read"], None),
                                    (["agents:read"], [projects["Q"]])):
            pids = [uuid.UUID(p) for p in project_ids] if project_ids else None
            assert await attempt(api_conn, insert, org, user, uuid.uuid4().bytes, scopes, pids) == (None, "42501")


async def test_rotation_cannot_escalate(client, tenant, projects):
    """Rotating returns a working secret: a credential may only rotate its own user's tokens
    whose scopes and projects it has itself (else rotation would mint a wider token)."""
    wide = await make_token(client, tenant, ALL_OWNER)
    narrow = await make_token(client, tenant, ["tokens:write"])
    r = await client.post(f"/v1/tokens/{wide['id']}/rotate", headers=bearer(narrow["token"]))
    body = assert_problem(r, 403)
    assert body.get("missing_scope") in ALL_OWNER
    assert (await client.get("/v1/me", headers=bearer(wide["token"]))).status_code == 200  # secret unchanged

    restricted = await make_token(client, tenant, ["tokens:write", "agents:read"], project_ids=[projects["P"]])
    unrestricted = await make_token(client, tenant, ["agents:read"])
    # its user's organization-wide token is not even visible to it (policies/platform_token.sql)
    assert_problem(await client.post(f"/v1/tokens/{unrestricted['id']}/rotate", headers=bearer(restricted["token"])), 404)
    assert (await client.get("/v1/me", headers=bearer(unrestricted["token"]))).status_code == 200

    # control: a token within the caller's scopes and projects can be rotated
    inside = await make_token(client, tenant, ["agents:read"], project_ids=[projects["P"]])
    r = await client.post(f"/v1/tokens/{inside['id']}/rotate", headers=bearer(restricted["token"]))
    assert r.status_code == 200, r.text


async def test_a_restricted_credential_sees_only_its_own_reach_of_its_users_tokens(client, tenant, projects, api_conn):
    """Of its user's tokens, a project-restricted credential reads itself and those whose
    reach lies inside its own projects: not the organization-wide token or session (they
    would tell it of projects beyond its own), not a token of another project; through
    the API and as the database's answer to any query in its context."""
    in_p = await make_token(client, tenant, ["tokens:read", "tokens:write", "agents:read"], project_ids=[projects["P"]])
    also_p = await make_token(client, tenant, ["agents:read"], project_ids=[projects["P"]])
    in_q = await make_token(client, tenant, ["agents:read"], project_ids=[projects["Q"]])
    both = await make_token(client, tenant, ["agents:read"], project_ids=[projects["P"], projects["Q"]])
    wide = await make_token(client, tenant, ["agents:read"])
    hidden = {in_q["id"], both["id"], wide["id"]}
    r = await client.get("/v1/tokens", headers=bearer(in_p["token"]), params={"limit": 200})
    assert r.status_code == 200, r.text
    items = r.json()["items"]  # the module's other tests made P-only tokens of this user too
    seen = {t["id"] for t in items}
    assert {in_p["id"], also_p["id"]} <= seen and not seen & hidden, items
    assert all(t["project_ids"] == [projects["P"]] for t in items), items
    for token in (in_q, both, wide):
        assert_problem(await client.get(f"/v1/tokens/{token['id']}", headers=bearer(in_p["token"])), 404)
    # the database says the same to any query: no session (organization-wide), nothing beyond P
    async with as_request(api_conn, in_p["token"]):
        rows = await api_conn.fetch("select id::text, kind, project_ids from platform_token")
    assert {r["id"] for r in rows} == seen, rows
    assert all(r["kind"] == "api" and [str(p) for p in r["project_ids"]] == [projects["P"]] for r in rows), rows
    # the unrestricted credential still sees every token of its user
    r = await client.get("/v1/tokens", headers=tenant.token_auth, params={"limit": 200})
    assert {in_p["id"], also_p["id"], in_q["id"], both["id"], wide["id"]} <= {t["id"] for t in r.json()["items"]}


async def test_admin_cannot_rotate_another_users_token(client, tenant, admin_conn):
    """An admin (members:write) sees and may revoke everyone's tokens, but rotating one
    would hand them its secret: impersonation of the owner."""
    other = await signup(client, f"adm{uuid.uuid4().hex[:8]}")
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role) values ($1, $2, 'admin')",
                             uuid.UUID(tenant.organization_id), uuid.UUID(other.user_id))
    r = await client.post("/v1/auth/login", json={"email": other.email, "password": other.password,
                                                  "organization_id": tenant.organization_id})
    assert r.status_code == 200, r.text
    admin = bearer(r.json()["access_token"])
    owners = await make_token(client, tenant, ["agents:read"])
    assert (await client.get(f"/v1/tokens/{owners['id']}", headers=admin)).status_code == 200  # visible to admins
    assert_problem(await client.post(f"/v1/tokens/{owners['id']}/rotate", headers=admin), 403)
    assert (await client.get("/v1/me", headers=bearer(owners["token"]))).status_code == 200


# --- project restriction ---------------------------------------------------------------


async def test_project_restriction(client, tenant, projects):
    tok = await make_token(client, tenant, ["agents:write", "org:read"], project_ids=[projects["P"]])
    h = bearer(tok["token"])
    r = await client.get("/v1/projects", headers=h)
    assert r.status_code == 200 and [p["id"] for p in r.json()["items"]] == [projects["P"]]
    r = await client.get("/v1/agents", headers=h, params={"limit": 200})
    agents = r.json()["items"]
    assert projects["aP"] in [a["id"] for a in agents]
    assert {a["project_id"] for a in agents} == {projects["P"]}
    for method in ("GET", "PATCH", "DELETE"):
        r = await client.request(method, f"/v1/agents/{projects['aQ']}", headers=h,
                                 json={"name": "moved"} if method == "PATCH" else None)
        assert_problem(r, 404)
    assert_problem(await client.get(f"/v1/projects/{projects['Q']}", headers=h), 404)
    body = assert_problem(await client.post("/v1/agents", headers=h, json={"project_id": projects["Q"], "name": "q2"}),
                          422, "project_id")
    assert body["errors"][0]["field"] == "project_id"
    assert (await client.get("/v1/agents", headers=h, params={"project_id": projects["Q"]})).json()["items"] == []
    r = await client.post("/v1/agents", headers=h, json={"project_id": projects["P"], "name": f"p-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text  # control
    # the unrestricted token still sees Q's agent, unchanged
    r = await client.get(f"/v1/agents/{projects['aQ']}", headers=tenant.token_auth)
    assert r.status_code == 200 and r.json()["name"] == "aQ"


# --- membership changes take effect on the next request --------------------------------


async def test_demotion_and_removal_take_effect_immediately(client, admin_conn):
    u = await signup(client, f"dem{uuid.uuid4().hex[:8]}")
    org, user = uuid.UUID(u.organization_id), uuid.UUID(u.user_id)
    assert (await client.post("/v1/workspaces", headers=u.token_auth, json={"name": "w1"})).status_code == 201
    await admin_conn.execute("update organization_membership set role = 'auditor' where organization_id = $1"
                             " and user_id = $2", org, user)
    assert_problem(await client.post("/v1/workspaces", headers=u.token_auth, json={"name": "w2"}), 403, "org:write")
    assert (await client.get("/v1/workspaces", headers=u.token_auth)).status_code == 200
    await admin_conn.execute("delete from organization_membership where organization_id = $1 and user_id = $2",
                             org, user)
    assert_problem(await client.get("/v1/workspaces", headers=u.token_auth), 401, "member")
    assert_problem(await client.get("/v1/me", headers=u.session_auth), 401, "member")


# --- malformed and forged credentials --------------------------------------------------


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def forged_credentials(tenant: Tenant, other: Tenant, secret: str) -> dict[str, str]:
    """Authorization header values that must all be refused with 401."""
    token = tenant.token
    body, check = token[len(TOKEN_PREFIX):-6], token[-6:]
    wrong_check = check[:-1] + ("A" if check[-1] != "A" else "B")
    claims = session_claims(tenant)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    valid = {**claims, "iat": now, "exp": now + 3600}
    header, _payload, signature = tenant.session.split(".")
    return {
        "wrong checksum": f"Bearer {TOKEN_PREFIX}{body}{wrong_check}",
        "too short": f"Bearer {token[:-1]}",
        "too long": f"Bearer {token}A",
        "bad character": f"Bearer {TOKEN_PREFIX}{body[:-1]}!{check}",
        "unknown but well-formed token": f"Bearer {new_api_token()}",
        "garbage": "Bearer garbage",
        "empty bearer": "Bearer ",
        "no scheme": token,
        "basic": "Basic dXNlcjpwYXNzd29yZA==",
        "token scheme": f"Token {token}",
        "jwt alg none": "Bearer " + jwt.encode(valid, None, algorithm="none"),
        "jwt alg none, no signature": f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{b64(valid)}.",
        "jwt other key": "Bearer " + jwt.encode(valid, "another-secret-" + "x" * 40, algorithm="HS256"),
        "jwt HS512 same key": "Bearer " + jwt.encode(valid, secret, algorithm="HS512"),
        "jwt tampered org": f"Bearer {header}.{b64({**claims, 'org': other.organization_id})}.{signature}",
        "jwt tampered sid": f"Bearer {header}.{b64({**claims, 'sid': str(uuid.uuid4())})}.{signature}",
        "jwt tampered exp": f"Bearer {header}.{b64({**claims, 'exp': claims['exp'] + 86400})}.{signature}",
        "jwt expired": "Bearer " + jwt.encode({**valid, "iat": now - 7200, "exp": now - 3600}, secret, algorithm="HS256"),
        "jwt wrong issuer": "Bearer " + jwt.encode({**valid, "iss": "someone-else"}, secret, algorithm="HS256"),
        "jwt without sid": "Bearer " + jwt.encode({k: v for k, v in valid.items() if k != "sid"}, secret,
                                                  algorithm="HS256"),
        "jwt bad sid": "Bearer " + jwt.encode({**valid, "sid": "not-a-uuid"}, secret, algorithm="HS256"),
        # correctly signed, but the session is another organization's: the database refuses it
        "jwt sid of another org": "Bearer " + jwt.encode({**valid, "sid": session_claims(other)["sid"]}, secret,
                                                         algorithm="HS256"),
        "jwt unknown session": "Bearer " + jwt.encode({**valid, "sid": str(uuid.uuid4())}, secret, algorithm="HS256"),
    }


@pytest.mark.filterwarnings("ignore:The HMAC key")
async def test_malformed_and_forged_credentials_are_401_and_change_nothing(client, tenant, settings, admin_conn):
    other = await signup(client, f"oth{uuid.uuid4().hex[:8]}")
    cases = forged_credentials(tenant, other, settings.auth.jwt_secret)
    # sanity: the genuine credentials work, so the forgeries are refused for being forged
    assert (await client.get("/v1/me", headers=tenant.token_auth)).status_code == 200
    assert (await client.get("/v1/me", headers=tenant.session_auth)).status_code == 200
    # Usage records are written a moment later by their own thread: let the sanity
    # requests' land first. Refused requests do leave usage records (security events,
    # issue 5): those are checked below, every other table must not change at all.
    await settle_usage(client)
    before = await snapshot_all(admin_conn)
    usage_before = await admin_conn.fetchval("select coalesce(max(occurred_at), '-infinity') from token_usage")
    audit_before = await admin_conn.fetchval("select count(*) from token_audit_log")
    for label, value in cases.items():
        for method, path, body in (("GET", "/v1/me", None), ("GET", "/v1/agents", None),
                                   ("POST", "/v1/agents", {"project_id": tenant.project_id, "name": label})):
            r = await client.request(method, path, headers={"Authorization": value}, json=body)
            assert r.status_code == 401, f"{label}: {method} {path} -> {r.status_code} {r.text}"
            assert_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer"), label
    assert await admin_conn.fetchval("select count(*) from token_audit_log") == audit_before
    await settle_usage(client)
    after = await snapshot_all(admin_conn)
    assert {k: v for k, v in after.items() if k != "token_usage"} == {
        k: v for k, v in before.items() if k != "token_usage"}
    statuses = await admin_conn.fetch("select distinct status from token_usage where occurred_at > $1", usage_before)
    assert {r["status"] for r in statuses} <= {401}, "a forged credential's request was recorded as not refused"


# --- sessions, login, signup -----------------------------------------------------------


async def test_logout_revokes_the_session(client, tenant):
    r = await client.post("/v1/auth/login", json={"email": tenant.email, "password": tenant.password})
    assert r.status_code == 200, r.text
    h = bearer(r.json()["access_token"])
    assert (await client.get("/v1/me", headers=h)).status_code == 200
    r = await client.post("/v1/auth/logout", headers=h)
    assert r.status_code == 204, r.text
    assert_problem(await client.get("/v1/me", headers=h), 401, "revoked")
    assert (await client.get("/v1/me", headers=tenant.session_auth)).status_code == 200  # other sessions live on


async def test_logout_with_an_api_token_revokes_that_token(client, tenant):
    tok = await make_token(client, tenant, ["agents:read"])  # no tokens:write needed to revoke oneself
    h = bearer(tok["token"])
    assert (await client.post("/v1/auth/logout", headers=h)).status_code == 204
    assert_problem(await client.get("/v1/me", headers=h), 401, "revoked")


async def test_login_does_not_tell_unknown_email_from_wrong_password(client, tenant):
    wrong_email = await client.post("/v1/auth/login", json={"email": f"nobody-{uuid.uuid4().hex}@example.com",
                                                           "password": tenant.password})
    wrong_password = await client.post("/v1/auth/login", json={"email": tenant.email, "password": tenant.password + "x"})
    a, b = assert_problem(wrong_email, 401), assert_problem(wrong_password, 401)
    strip = lambda body: {k: v for k, v in body.items() if k not in ("request_id", "instance")}  # noqa: E731
    assert strip(a) == strip(b)
    assert wrong_email.headers["www-authenticate"] == wrong_password.headers["www-authenticate"]
    assert wrong_email.headers["content-type"] == wrong_password.headers["content-type"]


async def test_signup_duplicate_email_is_409_case_insensitively(client, tenant):
    for email in (tenant.email, tenant.email.upper(), f"  {tenant.email.capitalize()} "):
        r = await client.post("/v1/auth/signup", json={"email": email, "password": "another-long-password",
                                                       "display_name": "dup"})
        assert_problem(r, 409)
