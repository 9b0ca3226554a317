"""No secret in the server's log: a real `tenant-api serve` (uvicorn, its log in a file)
goes through every flow that hands out or receives a secret, every secret is collected,
and the log file is searched for each. Clients misbehave on purpose: a token in a
WebSocket URL (the old ?access_token=), tokens and invite secrets in query strings,
passwords in failed logins, forged credentials."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tenant_api.scopes import ROLE_SCOPES
from tenant_api.auth import mail_secrets as tokens
from tests.support.database import connect
from tests.support.live_server import api_server

JWT_SECRET = "log-test-" + "j" * 40


class Secrets:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, what: str, value: str) -> str:
        assert value and len(value) >= 8, what
        self.values[what] = value
        return value


async def outbox_secret(admin_url: str, key: bytes, prefix: str, **where: uuid.UUID) -> str:
    """The secret a mail of the outbox carries, re-derived as the mailer does (reading the
    mailbox: this server has no SMTP_URL, so its mails wait in the outbox)."""
    (column, value), = where.items()
    conn = await connect(admin_url)
    try:
        nonce = await conn.fetchval(f"select nonce from invite_outbox where {column} = $1 order by id desc limit 1",
                                    value)
    finally:
        await conn.close()
    assert nonce is not None, f"no mail for {column} {value}"
    return tokens.derive(key, nonce, prefix)


async def signup(http: httpx.AsyncClient, secrets: Secrets, name: str, admin_url: str) -> dict[str, Any]:
    email = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    password = secrets.add(f"{name} password", f"pw-{uuid.uuid4().hex}")
    r = await http.post("/v1/auth/signup", json={"email": email, "password": password, "display_name": name})
    assert r.status_code == 201, r.text
    secrets.add(f"{name} signup session", r.json()["session"]["access_token"])
    # the verification mail's secret (invites need a verified address)
    verify = secrets.add(f"{name} verification secret", await outbox_secret(
        admin_url, tokens.verify_key(JWT_SECRET), tokens.VERIFY_PREFIX, user_id=uuid.UUID(r.json()["user"]["id"])))
    r = await http.post("/v1/auth/verify", json={"token": verify})
    assert r.status_code == 200, r.text
    if r.json()["session"]:
        secrets.add(f"{name} verification session", r.json()["session"]["access_token"])
    r = await http.post("/v1/auth/login", json={"email": email, "password": password})
    session = secrets.add(f"{name} session", r.json()["access_token"])
    hs = {"Authorization": f"Bearer {session}"}
    r = await http.post("/v1/tokens", headers=hs, json={"name": "all", "scopes": sorted(ROLE_SCOPES["owner"])})
    token = secrets.add(f"{name} token", r.json()["token"])
    return {**r.json(), "email": email, "password": password, "hs": hs, "h": {"Authorization": f"Bearer {token}"},
            "token": token, "project": (await http.get("/v1/me", headers=hs)).json().get("project_id")}


async def test_no_secret_reaches_the_server_log(database, tmp_path: Path):
    secrets = Secrets()
    env = {"DATABASE_URL": database.api_url, "LOGIN_DATABASE_URL": database.login_url,
           "JOBS_DATABASE_URL": database.jobs_url, "JWT_SECRET": JWT_SECRET}
    log = tmp_path / "api.log"
    with api_server(log, env) as api:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            alice = await signup(http, secrets, "alice", database.admin_url)
            bob = await signup(http, secrets, "bob", database.admin_url)
            project = (await http.get("/v1/projects", headers=alice["h"])).json()["items"][0]["id"]

            # failed logins carry passwords too
            wrong = secrets.add("wrong password", f"wrong-{uuid.uuid4().hex}")
            r = await http.post("/v1/auth/login", json={"email": alice["email"], "password": wrong})
            assert r.status_code == 401

            # a token's rotation hands out a new secret
            r = await http.post("/v1/tokens", headers=alice["hs"], json={"name": "robot", "scopes": ["desktops:write"]})
            robot_id = r.json()["id"]
            secrets.add("robot token", r.json()["token"])
            r = await http.post(f"/v1/tokens/{robot_id}/rotate", headers=alice["hs"])
            robot = secrets.add("rotated robot token", r.json()["token"])

            # invites: the secret in the response, accepted and declined by bob
            second = (await http.post("/v1/projects", headers=alice["h"], json={
                "workspace_id": (await http.get("/v1/workspaces", headers=alice["h"])).json()["items"][0]["id"],
                "name": "second"})).json()["id"]
            for what, where in (("accepted", project), ("declined", second)):
                r = await http.post(f"/v1/projects/{where}/invites", headers=alice["h"],
                                    json={"email": bob["email"], "role": "viewer"})
                assert r.status_code in (200, 201), r.text
                invite = secrets.add(f"{what} invite", r.json()["invite_token"])
                if what == "accepted":
                    r = await http.post("/v1/invites/accept", headers=bob["hs"], json={"invite_token": invite})
                    assert r.status_code == 201, r.text
                else:
                    # a misbehaving client puts the secret in the query string
                    r = await http.post(f"/v1/invites/decline?invite_token={invite}", headers=bob["hs"],
                                        json={"invite_token": invite})
                    assert r.status_code in (204, 409, 410), r.text

            # an organization invite answered with the mail's secret: preview, then sign up
            r = await http.post("/v1/organization/invites", headers=alice["h"],
                                json={"email": f"carol-{uuid.uuid4().hex[:6]}@example.com", "role": "member"})
            assert r.status_code == 201, r.text
            secrets.add("organization invite", r.json()["invite_token"])
            mailed = secrets.add("organization invite mail secret", await outbox_secret(
                database.admin_url, tokens.mail_key(JWT_SECRET), tokens.INVITE_PREFIX,
                invite_id=uuid.UUID(r.json()["id"])))
            r = await http.post(f"/v1/invites/preview?invite_token={mailed}", json={"invite_token": mailed})
            assert r.status_code == 200, r.text
            carol_password = secrets.add("carol password", f"pw-{uuid.uuid4().hex}")
            r = await http.post("/v1/invites/signup", json={"invite_token": mailed, "password": carol_password,
                                                            "display_name": "carol"})
            assert r.status_code == 201, r.text
            secrets.add("carol session", r.json()["session"]["access_token"])

            # a service account's token
            r = await http.post("/v1/service-accounts", headers=alice["h"], json={"name": "ci", "role": "member"})
            assert r.status_code == 201, r.text
            r = await http.post(f"/v1/service-accounts/{r.json()['id']}/tokens", headers=alice["h"],
                                json={"name": "deploy"})
            assert r.status_code == 201, r.text
            service_token = secrets.add("service account token", r.json()["token"])
            assert (await http.get("/v1/me", headers={"Authorization": f"Bearer {service_token}"})).status_code == 200

            # a service's secret environment value
            value = secrets.add("service secret", f"svc-{uuid.uuid4().hex}")
            r = await http.post("/v1/services", headers=alice["h"], json={
                "project_id": project, "name": "svc", "image": "img",
                "env": [{"name": "API_KEY", "value": value, "secret": True}]})
            assert r.status_code == 201, r.text

            # the robot's socket: the credential as a subprotocol, then the old way (in the URL)
            config = (await http.post("/v1/desktop-configs", headers=alice["h"],
                                      json={"project_id": project, "name": "c", "image": "i"})).json()
            vm = (await http.post("/v1/desktop-vms", headers=alice["h"],
                                  json={"config_id": config["id"], "name": "v"})).json()
            ws_url = api.url.replace("http://", "ws://") + f"/v1/desktop-connections/ws?vm_id={vm['id']}"
            async with websockets.connect(ws_url, subprotocols=["tenant-api.v1", f"bearer.{robot}"]) as ws:  # type: ignore[list-item]
                assert json.loads(await ws.recv())["type"] == "connected"
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await ws.recv()) == {"type": "pong"}
            # URL credentials are not read: refused before the handshake completes
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"{ws_url}&access_token={robot}") as ws:
                    await ws.recv()
            assert refused.value.response.status_code == 403

            # tokens in query strings of ordinary requests, and forged or revoked credentials
            r = await http.get(f"/v1/agents?access_token={alice['token']}", headers=alice["h"])
            assert r.status_code == 200
            r = await http.delete(f"/v1/tokens/{robot_id}", headers=alice["hs"])
            assert r.status_code == 204
            assert (await http.get("/v1/me", headers={"Authorization": f"Bearer {robot}"})).status_code == 401
            r = await http.post("/v1/auth/logout", headers=bob["hs"])
            assert r.status_code == 204

    text = log.read_text(errors="replace")
    leaked = [what for what, value in secrets.values.items() if value in text]
    assert not leaked, f"secrets in the server log: {leaked}"
    assert "?[redacted]" in text, f"the handshake line was not logged as expected:\n{text[-3000:]}"
    # Nor any recognisable part of one (a prefix long enough to matter).
    assert not [w for w, v in secrets.values.items() if v[:24] in text and not v.startswith(("pw-", "wrong-"))]
