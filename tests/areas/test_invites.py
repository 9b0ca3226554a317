"""Project invites over HTTP: two real users in two organizations, mail delivered by a
real local SMTP server (aiosmtpd), accepting exactly once, the invite's states, the
audit trail, and the secret that is shown once and nowhere else."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tenant_api.db.context import RESTRICTED_ROLE_SQL
from tenant_api.app import create_app
from tenant_api.auth.credentials import token_hash
from tenant_api.db.engine import create_api_engine, create_sessionmaker
from tenant_api.auth import mail_secrets as tokens
from tenant_api.invites.mailer import Mailer
from tenant_api.settings import InviteSettings
from tests.support.tenants import bearer, make_token, signup
from tests.support.members_flow import invite, join, login, new_agent, new_project, session_id
from tests.support.live_server import free_port
from tests.support.mail import Inbox, body_of, smtp_server

LINK = re.compile(r"invite_token=(tinv_[0-9A-Za-z]+)")


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, str]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
async def mail_client(settings, smtp) -> AsyncIterator[AsyncTestClient]:
    """The API with its mailer running (started by create_app) against the local server."""
    app = create_app(settings.with_invites(smtp_url=smtp[1], poll_seconds=0.05))
    async with AsyncTestClient(app) as c:
        yield c


@pytest.fixture
async def make_mailer(settings) -> AsyncIterator[Callable[..., Mailer]]:
    """Mailers run by the test itself, one round at a time, on their own pool (the app's
    connections belong to the test client's event loop)."""
    engine = create_api_engine(settings.database.jobs_database())  # the API process's background login

    def make(jwt_secret: str = settings.auth.jwt_secret, **invite_settings: Any) -> Mailer:
        return Mailer(create_sessionmaker(engine), InviteSettings(**invite_settings), jwt_secret)

    yield make
    await engine.dispose()


async def drain(mailer: Mailer) -> None:
    """Run rounds until nothing is due (earlier tests may have left mail in the outbox)."""
    while await mailer.run_once():
        pass


async def test_whole_flow_invite_mail_accept_login_one_project(mail_client, smtp, admin_conn, api_conn, caplog):
    caplog.set_level(logging.DEBUG)
    inbox, _ = smtp
    client = mail_client
    alice = await signup(client)  # the inviting organization's owner
    bob = await signup(client)  # the invitee, with an organization of his own
    other_ws = (await client.post("/v1/workspaces", headers=alice.token_auth, json={"name": "other"})).json()
    p1 = alice.project_id
    p2 = (await new_project(client, alice, other_ws["id"]))["id"]
    a1 = await new_agent(client, alice.token_auth, p1)
    a2 = await new_agent(client, alice.token_auth, p2)
    await new_agent(client, bob.token_auth, bob.project_id)

    # Invite, with the email in another case than Bob signed up with.
    created = await invite(client, alice.token_auth, p1, bob.email.upper(), "editor")
    secret = created["invite_token"]
    assert secret.startswith("tinv_") and created["status"] == "pending" and created["role"] == "editor"
    expires = dt.datetime.fromisoformat(created["expires_at"])
    assert dt.timedelta(days=6, hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=7)

    # The mail arrives, with a link to the invite page carrying the mail's own secret
    # (not the one the inviter saw: only the mail's proves the mailbox).
    [mail] = await inbox.wait_for(bob.email)
    assert mail["To"].lower() == bob.email.lower() and "Invitation to" in mail["Subject"]
    mail_secret = LINK.search(body_of(mail)).group(1)
    assert mail_secret != secret and tokens.invite_hash(mail_secret)
    assert f"/invites/accept#invite_token={mail_secret}" in body_of(mail)
    # The mailer marks the mail sent right after the SMTP server took it: a moment later.
    for _ in range(100):
        r = await client.get(f"/v1/projects/{p1}/invites/{created['id']}", headers=alice.token_auth)
        if r.status_code != 200 or r.json()["delivery_status"] == "sent":
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 200 and r.json()["delivery_status"] == "sent", r.text
    assert secret not in r.text

    # Accept: a membership of that project.
    r = await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": secret})
    assert r.status_code == 201, r.text
    assert r.json()["organization_id"] == alice.organization_id and r.json()["project_id"] == p1
    assert r.json()["role"] == "editor" and secret not in r.text

    # Log in to the inviting organization: restricted to the one project, editor scopes.
    bh = await login(client, bob, alice.organization_id)
    me = (await client.get("/v1/me", headers=bh)).json()
    assert me["organization_id"] == alice.organization_id and me["project_ids"] == [p1]
    assert me["role"] == "project:editor" and "agents:write" in me["scopes"]
    assert "members:write" not in me["scopes"] and "audit:read" not in me["scopes"]

    # Through the API: exactly one project, its agents, nothing else of Alice's or Bob's own.
    r = await client.get("/v1/projects", headers=bh)
    assert [p["id"] for p in r.json()["items"]] == [p1]
    assert [a["id"] for a in (await client.get("/v1/agents", headers=bh)).json()["items"]] == [a1["id"]]
    assert (await client.get(f"/v1/agents/{a2['id']}", headers=bh)).status_code == 404
    assert (await client.get(f"/v1/projects/{p2}", headers=bh)).status_code == 404
    assert (await client.get(f"/v1/projects/{bob.project_id}", headers=bh)).status_code == 404
    assert [w["id"] for w in (await client.get("/v1/workspaces", headers=bh)).json()["items"]] == [alice.workspace_id]
    assert (await client.get("/v1/audit/events", headers=bh)).status_code == 403
    r = await client.post("/v1/agents", headers=bh, json={"project_id": p2, "name": "sneaky"})
    assert r.status_code == 422, r.text
    new = await new_agent(client, bh, p1)
    assert new["project_id"] == p1

    # A token made in that session is restricted the same way.
    r = await client.post("/v1/tokens", headers=bh, json={"name": "bob in alice", "scopes": ["agents:read", "org:read"]})
    assert r.status_code == 201 and r.json()["project_ids"] == [p1], r.text
    th = bearer(r.json()["token"])
    assert [p["id"] for p in (await client.get("/v1/projects", headers=th)).json()["items"]] == [p1]
    assert {a["project_id"] for a in (await client.get("/v1/agents", headers=th)).json()["items"]} == {p1}

    # Through SQL as the API role, with Bob's session as the context: the same, table by table.
    tables: dict[str, list[str]] = {}  # every tenant table -> its key columns
    for r in await admin_conn.fetch(
            "select table_name, array_agg(column_name::text) as cols from information_schema.columns"
            " where table_schema = 'public' and column_name in ('organization_id', 'id', 'project_id', 'user_id')"
            " group by 1 having 'organization_id' = any(array_agg(column_name::text))"):
        tables[r["table_name"]] = r["cols"]
    assert {"project", "agent", "project_invite", "invite_outbox", "platform_token"} <= set(tables)
    async with api_conn.transaction():
        row = await api_conn.fetchrow("select status, project_ids from auth.begin_request(null, $1, $2, 'test')",
                                      uuid.UUID(session_id(bh)), uuid.UUID(alice.organization_id))
        assert row["status"] == "ok" and row["project_ids"] == [uuid.UUID(p1)]
        await api_conn.execute(RESTRICTED_ROLE_SQL)  # as the API does for a restricted context
        seen = {t: await api_conn.fetch(f"select {', '.join(cols)} from public.{t}") for t, cols in tables.items()}
        orgs = await api_conn.fetch("select id from public.organization")
        users = await api_conn.fetch("select id from public.user_account")
    assert {str(r["id"]) for r in orgs} == {alice.organization_id}
    assert {str(r["id"]) for r in users} == {bob.user_id}
    for table, rows in seen.items():
        assert {str(r["organization_id"]) for r in rows} <= {alice.organization_id}, table
        if rows and "project_id" in rows[0].keys():
            assert {str(r["project_id"]) for r in rows} == {p1}, table
    assert [str(r["id"]) for r in seen["project"]] == [p1]
    assert [str(r["id"]) for r in seen["workspace"]] == [alice.workspace_id]
    assert {str(r["id"]) for r in seen["agent"]} == {a1["id"], new["id"]}
    assert seen["organization_membership"] == [] and seen["token_audit_log"] == []
    assert {str(r["user_id"]) for r in seen["platform_token"]} == {bob.user_id}
    assert [str(r["user_id"]) for r in seen["project_membership"]] == [bob.user_id]

    # The secret: in the creation response and the mail only.
    hashes = [token_hash(secret).hex(), token_hash(mail_secret).hex()]
    audit = await admin_conn.fetchval("select string_agg(changes::text, ' ') from token_audit_log")
    assert secret not in audit and mail_secret not in audit and not any(h in audit for h in hashes)
    assert secret not in caplog.text and mail_secret not in caplog.text
    assert created["email"] in audit  # (the search above ran over the invite's rows)


async def test_twenty_concurrent_accepts_make_one_membership(client, admin_conn):
    alice, bob = await signup(client), await signup(client)
    created = await invite(client, alice.token_auth, alice.project_id, bob.email, "viewer")
    body = {"invite_token": created["invite_token"]}
    responses = await asyncio.gather(*(client.post("/v1/invites/accept", headers=bob.session_auth, json=body)
                                       for _ in range(20)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [410] * 19, codes
    assert all(r.json()["detail"] == "the invite was already used" for r in responses if r.status_code == 410)
    assert await admin_conn.fetchval(
        "select count(*) from project_membership where organization_id = $1 and user_id = $2",
        uuid.UUID(alice.organization_id), uuid.UUID(bob.user_id)) == 1


async def test_expired_revoked_used_declined_are_410_saying_which(client, admin_conn):
    alice, bob = await signup(client), await signup(client)
    p = alice.project_id
    projects = [(await new_project(client, alice))["id"] for _ in range(3)]

    used = await invite(client, alice.token_auth, p, bob.email)
    assert (await client.post("/v1/invites/accept", headers=bob.session_auth,
                              json={"invite_token": used["invite_token"]})).status_code == 201

    expired = await invite(client, alice.token_auth, projects[0], bob.email)
    await admin_conn.execute("update project_invite set expires_at = now() - interval '1 second'"
                             " where organization_id = $1 and id = $2",
                             uuid.UUID(alice.organization_id), uuid.UUID(expired["id"]))

    revoked = await invite(client, alice.token_auth, projects[1], bob.email)
    r = await client.delete(f"/v1/projects/{projects[1]}/invites/{revoked['id']}", headers=alice.token_auth)
    assert r.status_code == 204, r.text

    declined = await invite(client, alice.token_auth, projects[2], bob.email)
    r = await client.post("/v1/invites/decline", headers=bob.session_auth, json={"invite_token": declined["invite_token"]})
    assert r.status_code == 204, r.text

    for inv, status, detail in [(used, "used", "already used"), (expired, "expired", "expired"),
                                (revoked, "revoked", "revoked"), (declined, "declined", "declined")]:
        for action in ("accept", "decline"):
            r = await client.post(f"/v1/invites/{action}", headers=bob.session_auth, json={"invite_token": inv["invite_token"]})
            assert r.status_code == 410, (status, r.text)
            assert detail in r.json()["detail"] and r.json()["invite_status"] == status

    # The list derives each status.
    statuses = {}
    for project in (p, *projects):
        for item in (await client.get(f"/v1/projects/{project}/invites", headers=alice.token_auth)).json()["items"]:
            statuses[item["id"]] = item["status"]
    assert statuses == {used["id"]: "accepted", expired["id"]: "expired", revoked["id"]: "revoked",
                        declined["id"]: "declined"}
    r = await client.get(f"/v1/projects/{projects[0]}/invites", headers=alice.token_auth, params={"status": "expired"})
    assert [i["id"] for i in r.json()["items"]] == [expired["id"]]
    r = await client.get(f"/v1/projects/{projects[0]}/invites", headers=alice.token_auth, params={"status": "pending"})
    assert r.json()["items"] == []


async def test_another_users_invite_is_404_whatever_its_state(client):
    alice, bob, carol = await signup(client), await signup(client), await signup(client)
    pending = await invite(client, alice.token_auth, alice.project_id, bob.email)
    for action in ("accept", "decline"):
        r = await client.post(f"/v1/invites/{action}", headers=carol.session_auth, json={"invite_token": pending["invite_token"]})
        assert r.status_code == 404 and r.json()["detail"] == "invite not found", r.text
    # Even once it is revoked (a 410 would tell Carol it exists).
    await client.delete(f"/v1/projects/{alice.project_id}/invites/{pending['id']}", headers=alice.token_auth)
    r = await client.post("/v1/invites/accept", headers=carol.session_auth, json={"invite_token": pending["invite_token"]})
    assert r.status_code == 404
    # An unknown but well-formed secret, and a malformed one.
    fake = tokens.derive(b"k" * 32, b"n" * 32)
    assert (await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": fake})).status_code == 404
    r = await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": fake[:-1] + "x"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "invite_token"


async def test_one_open_invite_per_email_and_resend(client, admin_conn):
    alice, bob = await signup(client), await signup(client)
    p = alice.project_id
    first = await invite(client, alice.token_auth, p, bob.email, "viewer")
    r = await client.post(f"/v1/projects/{p}/invites", headers=alice.token_auth, json={"email": bob.email.upper(), "role": "viewer"})
    assert r.status_code == 409 and r.json()["invite_id"] == first["id"], r.text

    # Resend: a new secret and expiry; the old secret stops working.
    await admin_conn.execute("update project_invite set expires_at = now() - interval '1 second'"
                             " where organization_id = $1 and id = $2",
                             uuid.UUID(alice.organization_id), uuid.UUID(first["id"]))
    r = await client.post(f"/v1/projects/{p}/invites/{first['id']}/resend", headers=alice.token_auth)
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["id"] == first["id"] and second["status"] == "pending" and second["send_count"] == 2
    assert second["invite_token"] != first["invite_token"]
    assert dt.datetime.fromisoformat(second["expires_at"]) > dt.datetime.fromisoformat(first["expires_at"])
    # ...and through POST with resend: true, which may also change the role.
    r = await client.post(f"/v1/projects/{p}/invites", headers=alice.token_auth,
                          json={"email": bob.email, "role": "admin", "resend": True})
    assert r.status_code == 200 and r.json()["id"] == first["id"] and r.json()["role"] == "admin", r.text
    third = r.json()
    # Only the latest mail is still to be sent.
    outbox = await admin_conn.fetch("select status from invite_outbox where organization_id = $1 and invite_id = $2"
                                    " order by id", uuid.UUID(alice.organization_id), uuid.UUID(first["id"]))
    assert [o["status"] for o in outbox] == ["cancelled", "cancelled", "pending"]

    for old in (first, second):
        r = await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": old["invite_token"]})
        assert r.status_code == 404, r.text
    r = await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": third["invite_token"]})
    assert r.status_code == 201 and r.json()["role"] == "admin"

    # Now a member: inviting again is a 409; an accepted invite cannot be resent or revoked.
    r = await client.post(f"/v1/projects/{p}/invites", headers=alice.token_auth, json={"email": bob.email, "role": "viewer"})
    assert r.status_code == 409 and "already a member" in r.json()["detail"]
    for method, path in [("POST", f"/v1/projects/{p}/invites/{first['id']}/resend"),
                         ("DELETE", f"/v1/projects/{p}/invites/{first['id']}")]:
        r = await client.request(method, path, headers=alice.token_auth)
        assert r.status_code == 409 and "accepted" in r.json()["detail"], r.text
    # An organization member is never invited to a project: they see every project.
    r = await client.post(f"/v1/projects/{p}/invites", headers=alice.token_auth, json={"email": alice.email, "role": "viewer"})
    assert r.status_code == 409 and "organization" in r.json()["detail"]

    # After a revoke, a new invite for the email is allowed.
    carol = await signup(client)
    c1 = await invite(client, alice.token_auth, p, carol.email)
    assert (await client.delete(f"/v1/projects/{p}/invites/{c1['id']}", headers=alice.token_auth)).status_code == 204
    assert (await client.delete(f"/v1/projects/{p}/invites/{c1['id']}", headers=alice.token_auth)).status_code == 204
    c2 = await invite(client, alice.token_auth, p, carol.email)
    assert c2["id"] != c1["id"]


async def test_accepting_as_an_existing_member_is_409_and_the_invite_stays_open(client):
    alice, bob = await signup(client), await signup(client)
    p2 = (await new_project(client, alice))["id"]
    await join(client, alice, bob, alice.project_id, "viewer")
    later = await invite(client, alice.token_auth, p2, bob.email)
    r = await client.post("/v1/organization/members", headers=alice.token_auth, json={"user_id": bob.user_id, "role": "member"})
    assert r.status_code == 201, r.text
    r = await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": later["invite_token"]})
    assert r.status_code == 409 and "already a member" in r.json()["detail"], r.text
    r = await client.get(f"/v1/projects/{p2}/invites/{later['id']}", headers=alice.token_auth)
    assert r.json()["status"] == "pending"


async def test_invalid_input_is_422_naming_the_field(client):
    alice = await signup(client)
    url = f"/v1/projects/{alice.project_id}/invites"
    for body, field in [({"email": "not-an-email", "role": "viewer"}, "email"),
                        ({"email": "x@example.com", "role": "owner"}, "role"),
                        ({"email": "x@example.com", "role": "viewer", "extra": 1}, "extra")]:
        r = await client.post(url, headers=alice.token_auth, json=body)
        assert r.status_code == 422 and field in r.text, r.text


async def test_other_organizations_ids_are_404_and_scopes_are_checked(client):
    alice, mallory = await signup(client), await signup(client)
    inv = await invite(client, alice.token_auth, alice.project_id, f"{uuid.uuid4().hex[:8]}@example.com")
    p, i = alice.project_id, inv["id"]
    routes = [("GET", f"/v1/projects/{p}/invites", None), ("POST", f"/v1/projects/{p}/invites",
              {"email": "z@example.com", "role": "viewer"}), ("GET", f"/v1/projects/{p}/invites/{i}", None),
              ("DELETE", f"/v1/projects/{p}/invites/{i}", None), ("POST", f"/v1/projects/{p}/invites/{i}/resend", None)]
    for method, path, body in routes:
        r = await client.request(method, path, headers=mallory.token_auth, json=body)
        assert r.status_code == 404, (method, path, r.text)
    # Alice's invite id under Mallory's own project: still not found.
    for method, path in [("GET", f"/v1/projects/{mallory.project_id}/invites/{i}"),
                         ("DELETE", f"/v1/projects/{mallory.project_id}/invites/{i}"),
                         ("POST", f"/v1/projects/{mallory.project_id}/invites/{i}/resend")]:
        assert (await client.request(method, path, headers=mallory.token_auth)).status_code == 404, (method, path)

    reader = bearer((await make_token(client, alice, ["members:read", "org:read"]))["token"])
    nobody = bearer((await make_token(client, alice, ["agents:read"]))["token"])
    r = await client.get(f"/v1/projects/{p}/invites", headers=nobody)
    assert r.status_code == 403 and r.json()["missing_scope"] == "members:read"
    assert (await client.get(f"/v1/projects/{p}/invites", headers=reader)).status_code == 200
    for method, path, body in routes[1:2] + routes[3:]:
        r = await client.request(method, path, headers=reader, json=body)
        assert r.status_code == 403 and r.json()["missing_scope"] == "members:write", (method, path, r.text)


async def test_every_invite_action_is_audited_without_the_secret(client, admin_conn):
    alice, bob, carol = await signup(client), await signup(client), await signup(client)
    p = alice.project_id
    org = uuid.UUID(alice.organization_id)
    b = await invite(client, alice.token_auth, p, bob.email)
    resent = (await client.post(f"/v1/projects/{p}/invites/{b['id']}/resend", headers=alice.token_auth)).json()
    accepted = await client.post("/v1/invites/accept", headers=bob.session_auth, json={"invite_token": resent["invite_token"]})
    assert accepted.status_code == 201
    c = await invite(client, alice.token_auth, p, carol.email)
    assert (await client.post("/v1/invites/decline", headers=carol.session_auth,
                              json={"invite_token": c["invite_token"]})).status_code == 204
    d = await invite(client, alice.token_auth, p, f"{uuid.uuid4().hex[:8]}@example.com")
    assert (await client.delete(f"/v1/projects/{p}/invites/{d['id']}", headers=alice.token_auth)).status_code == 204

    async def trail(invite_id: str) -> list[tuple[str, str, str, set[str]]]:
        """The audit rows of an invite, its mails and the membership it made, in order."""
        ids = [uuid.UUID(invite_id), *(r["id"] for r in await admin_conn.fetch(
            "select id from invite_outbox where organization_id = $1 and invite_id = $2"
            " union all select id from project_membership where organization_id = $1 and invite_id = $2",
            org, uuid.UUID(invite_id)))]
        rows = await admin_conn.fetch(
            "select table_name, action, token_id::text, changes from token_audit_log"
            " where organization_id = $1 and row_id = any($2::uuid[]) order by occurred_at, id", org, ids)
        return [(r["table_name"], r["action"], r["token_id"], set(json.loads(r["changes"]))) for r in rows]

    bob_token = (await client.get("/v1/me", headers=bob.session_auth)).json()["token"]["id"]
    t = await trail(b["id"])
    assert [(x[0], x[1]) for x in t] == [
        ("project_invite", "INSERT"), ("invite_outbox", "INSERT"),  # create
        ("project_invite", "UPDATE"), ("invite_outbox", "UPDATE"), ("invite_outbox", "INSERT"),  # resend
        # accept, as Bob: the invite is marked accepted first, so the membership guard
        # (policies/organization_membership.sql) sees the accepted invite that admits him
        ("project_invite", "UPDATE"), ("project_membership", "INSERT"),
    ], t
    assert t[2][3] == {"token_hash", "mail_token_hash", "expires_at", "send_count", "updated_at"}
    assert {x[2] for x in t[:5]} == {alice.token_id} and {x[2] for x in t[5:]} == {bob_token}
    assert "accepted_at" in t[5][3]
    assert [(x[0], x[1], "declined_at" in x[3]) for x in await trail(c["id"])][-1] == ("project_invite", "UPDATE", True)
    assert [(x[0], x[1]) for x in await trail(d["id"])][-2:] == [("project_invite", "UPDATE"), ("invite_outbox", "UPDATE")]

    # Neither secret, nor hash, nor outbox nonce anywhere in the log.
    audit = await admin_conn.fetchval("select string_agg(changes::text, ' ') from token_audit_log"
                                      " where organization_id = $1", org)
    nonces = [r["nonce"].hex() for r in await admin_conn.fetch("select nonce from invite_outbox where organization_id = $1", org)]
    secrets_ = [b["invite_token"], resent["invite_token"], c["invite_token"], d["invite_token"]]
    assert '"token_hash": "[redacted]"' in audit
    for needle in [*secrets_, *(token_hash(s).hex() for s in secrets_), *nonces]:
        assert needle not in audit
    # ...nor in any response after creation.
    for path in (f"/v1/projects/{p}/invites", f"/v1/projects/{p}/invites/{b['id']}", f"/v1/projects/{p}/members"):
        text = (await client.get(path, headers=alice.token_auth)).text
        assert not any(s in text for s in secrets_), path
    assert not any(s in accepted.text for s in secrets_)


async def test_failed_send_is_retried_with_backoff_and_never_loses_the_invite(client, make_mailer, smtp, admin_conn,
                                                                               caplog):
    caplog.set_level(logging.DEBUG)
    inbox, url = smtp
    alice, bob = await signup(client), await signup(client)
    inbox.refuse_once.add(bob.email.lower())
    created = await invite(client, alice.token_auth, alice.project_id, bob.email)
    key = (uuid.UUID(alice.organization_id), uuid.UUID(created["id"]))
    mailer = make_mailer(smtp_url=url, backoff_seconds=30)
    row = "select status, attempts, next_attempt_at - now() as wait, last_error from invite_outbox" \
          " where organization_id = $1 and invite_id = $2"

    await drain(mailer)
    first = await admin_conn.fetchrow(row, *key)
    assert first["status"] == "pending" and first["attempts"] == 1 and "451" in first["last_error"]
    assert dt.timedelta(seconds=25) < first["wait"] <= dt.timedelta(seconds=30)
    r = await client.get(f"/v1/projects/{alice.project_id}/invites/{created['id']}", headers=alice.token_auth)
    assert r.json()["status"] == "pending" and r.json()["delivery_status"] == "pending"
    await drain(mailer)  # not due yet: nothing happens
    assert (await admin_conn.fetchrow(row, *key))["attempts"] == 1 and inbox.to(bob.email) == []

    await admin_conn.execute("update invite_outbox set next_attempt_at = now() where organization_id = $1"
                             " and invite_id = $2", *key)
    await drain(mailer)
    [mail] = inbox.to(bob.email)
    assert LINK.search(body_of(mail)).group(1) != created["invite_token"]
    done = await admin_conn.fetchrow(row, *key)
    assert done["status"] == "sent" and done["attempts"] == 2
    assert created["invite_token"] not in caplog.text


async def test_two_mailers_side_by_side_send_each_mail_once(client, make_mailer, smtp):
    inbox, url = smtp
    alice = await signup(client)
    emails = [f"{uuid.uuid4().hex[:8]}@example.com" for _ in range(4)]
    for email in emails:
        await invite(client, alice.token_auth, alice.project_id, email)
    one, two = make_mailer(smtp_url=url), make_mailer(smtp_url=url)
    await asyncio.gather(drain(one), drain(two))
    assert [len(inbox.to(e)) for e in emails] == [1, 1, 1, 1]


async def test_a_dead_server_gives_up_after_max_attempts_and_the_invite_stays(client, make_mailer, admin_conn):
    alice, bob = await signup(client), await signup(client)
    created = await invite(client, alice.token_auth, alice.project_id, bob.email)
    key = (uuid.UUID(alice.organization_id), uuid.UUID(created["id"]))
    mailer = make_mailer(smtp_url=f"smtp://127.0.0.1:{free_port()}", max_attempts=2, backoff_seconds=1)
    for _ in range(2):
        await admin_conn.execute("update invite_outbox set next_attempt_at = now() where organization_id = $1"
                                 " and invite_id = $2", *key)
        await drain(mailer)
    row = await admin_conn.fetchrow("select status, attempts, last_error from invite_outbox"
                                    " where organization_id = $1 and invite_id = $2", *key)
    assert row["status"] == "failed" and row["attempts"] == 2 and "Connection" in row["last_error"]
    inv = (await client.get(f"/v1/projects/{alice.project_id}/invites/{created['id']}", headers=alice.token_auth)).json()
    assert inv["status"] == "pending" and inv["delivery_status"] == "failed"
    # The invite still works, and a resend queues a new mail.
    r = await client.post(f"/v1/projects/{alice.project_id}/invites/{created['id']}/resend", headers=alice.token_auth)
    assert r.status_code == 200 and r.json()["delivery_status"] == "pending"


async def test_development_default_logs_the_link_and_a_changed_key_is_not_sent(client, make_mailer, admin_conn, caplog):
    alice, bob, carol = await signup(client), await signup(client), await signup(client)
    created = await invite(client, alice.token_auth, alice.project_id, bob.email)
    caplog.set_level(logging.INFO, logger="tenant_api.mailer")
    dev = make_mailer(log_links=True)
    await drain(dev)
    # The mail's own secret (not the inviter's), on the invite page of the default PUBLIC_URL.
    logged = LINK.search(caplog.text).group(1)
    assert logged != created["invite_token"] and created["invite_token"] not in caplog.text
    assert f"http://127.0.0.1:8000/invites/accept#invite_token={logged}" in caplog.text

    # Mail queued under one JWT_SECRET, sent under another: the secret cannot be re-derived.
    other = await invite(client, alice.token_auth, alice.project_id, carol.email)
    rotated = make_mailer("another-secret" * 4, log_links=True)
    await drain(rotated)
    row = await admin_conn.fetchrow("select status, last_error from invite_outbox where organization_id = $1"
                                    " and invite_id = $2", uuid.UUID(alice.organization_id), uuid.UUID(other["id"]))
    assert row["status"] == "failed" and "JWT_SECRET" in row["last_error"]
    assert other["invite_token"] not in caplog.text
