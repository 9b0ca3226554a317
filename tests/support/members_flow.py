"""Helpers for the invite and membership tests: two real users in two organizations,
driven through the HTTP API only."""

from __future__ import annotations

import uuid
from typing import Any

import jwt
from litestar.testing import AsyncTestClient

from tests.support.tenants import Tenant, bearer


async def new_project(client: AsyncTestClient, admin: Tenant, workspace_id: str | None = None) -> dict:
    r = await client.post("/v1/projects", headers=admin.token_auth,
                          json={"workspace_id": workspace_id or admin.workspace_id, "name": f"p-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    return r.json()


async def new_agent(client: AsyncTestClient, headers: dict, project_id: str) -> dict:
    r = await client.post("/v1/agents", headers=headers, json={"project_id": project_id, "name": f"a-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    return r.json()


async def invite(client: AsyncTestClient, headers: dict, project_id: str, email: str, role: str = "editor",
                 **extra: Any) -> dict:
    r = await client.post(f"/v1/projects/{project_id}/invites", headers=headers,
                          json={"email": email, "role": role, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def login(client: AsyncTestClient, user: Tenant, organization_id: str | None = None,
                **extra: Any) -> dict[str, str]:
    body: dict[str, Any] = {"email": user.email, "password": user.password, **extra}
    if organization_id:
        body["organization_id"] = organization_id
    r = await client.post("/v1/auth/login", json=body)
    assert r.status_code == 200, r.text
    return bearer(r.json()["access_token"])


async def join(client: AsyncTestClient, admin: Tenant, member: Tenant, project_id: str,
               role: str = "editor") -> dict[str, str]:
    """Invite ``member`` to ``project_id`` of ``admin``'s organization, accept, and log in
    there. Returns the member's session headers in the inviting organization."""
    inv = await invite(client, admin.token_auth, project_id, member.email, role)
    r = await client.post("/v1/invites/accept", headers=member.session_auth, json={"invite_token": inv["invite_token"]})
    assert r.status_code == 201, r.text
    return await login(client, member, admin.organization_id)


def session_id(headers: dict[str, str]) -> str:
    token = headers["Authorization"].split()[1]
    return jwt.decode(token, options={"verify_signature": False})["sid"]
