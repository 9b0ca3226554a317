"""Tenants as the tests make them: sign up through the API, with a session and a token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from litestar.testing import AsyncTestClient

from tests.support.database import ADMIN_URL, connect

TEST_JWT_SECRET = "test-secret-" + "k" * 40


@dataclass
class Tenant:
    """A signed-up user with their organization, a session and an all-scopes API token."""

    email: str
    password: str
    user_id: str
    organization_id: str
    workspace_id: str
    project_id: str
    session: str
    token: str
    token_id: str

    @property
    def token_auth(self) -> dict[str, str]:
        """The Authorization header of its API token (every scope of an owner)."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def session_auth(self) -> dict[str, str]:
        """The Authorization header of its session (a login's JWT)."""
        return {"Authorization": f"Bearer {self.session}"}


async def verification_secret(user_id: str) -> str:
    """The secret of the user's latest verification mail, as the mail's link carries it
    (re-derived from the outbox row like the mailer does): reading the user's mailbox."""
    from tenant_api.auth import mail_secrets as tokens

    conn = await connect(ADMIN_URL[0])
    try:
        nonce = await conn.fetchval("select nonce from invite_outbox where kind = 'verify' and user_id = $1"
                                    " order by id desc limit 1", uuid.UUID(user_id))
    finally:
        await conn.close()
    assert nonce is not None, "no verification mail"
    return tokens.derive(tokens.verify_key(TEST_JWT_SECRET), nonce, tokens.VERIFY_PREFIX)


async def signup(client: AsyncTestClient, name: str | None = None, verified: bool = True) -> Tenant:
    """Sign up (and, unless ``verified`` is false, follow the verification mail's link)."""
    from tenant_api.scopes import ROLE_SCOPES

    name = name or uuid.uuid4().hex[:10]
    email, password = f"{name}@example.com", f"pw-{name}-long-enough"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password, "display_name": name})
    assert r.status_code == 201, r.text
    body = r.json()
    if verified:
        r = await client.post("/v1/auth/verify", json={"token": await verification_secret(body["user"]["id"])})
        assert r.status_code == 200, r.text
    r = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    session = r.json()["access_token"]
    r = await client.post("/v1/tokens", headers={"Authorization": f"Bearer {session}"},
                          json={"name": "all", "scopes": sorted(ROLE_SCOPES["owner"])})
    assert r.status_code == 201, r.text
    return Tenant(email=email, password=password, user_id=body["user"]["id"],
                  organization_id=body["organization_id"], workspace_id=body["workspace_id"],
                  project_id=body["project_id"], session=session, token=r.json()["token"], token_id=r.json()["id"])


async def make_token(client: AsyncTestClient, tenant: Tenant, scopes: list[str], **extra: Any) -> dict:
    r = await client.post("/v1/tokens", headers=tenant.session_auth, json={"name": "t", "scopes": scopes, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
