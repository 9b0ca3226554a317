"""Rows of an area made (or moved) through the API, for tests of other concerns."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.tenants import Tenant

U = uuid.UUID


async def move(client, tenant, path, item_id, status):
    return await client.patch(f"{path}/{item_id}", headers=tenant.token_auth, json={"status": status})


async def make_config(client, tenant: Tenant, **extra: Any) -> dict:
    body = {"project_id": tenant.project_id, "name": f"cfg-{uuid.uuid4().hex[:8]}", "image": "ubuntu:24.04", **extra}
    r = await client.post("/v1/desktop-configs", headers=tenant.token_auth, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def make_vm(client, tenant: Tenant, status: str = "running") -> dict:
    config = await make_config(client, tenant)
    r = await client.post("/v1/desktop-vms", headers=tenant.token_auth, json={"config_id": config["id"], "name": "vm"})
    assert r.status_code == 201, r.text
    vm = r.json()
    if status == "running":
        r = await client.post(f"/v1/desktop-vms/{vm['id']}/start", headers=tenant.token_auth)
        assert r.status_code == 200, r.text
        vm = r.json()
    return vm


async def insert_connection(admin_conn, tenant: Tenant, vm: dict, *, instance: str, seen_ago: str = "0 seconds") -> U:
    return await admin_conn.fetchval(
        "insert into desktop_connection (organization_id, project_id, vm_id, token_id, api_instance_id, last_seen_at)"
        " values ($1, $2, $3, $4, $5, now() - $6::text::interval) returning id",
        U(tenant.organization_id), U(vm["project_id"]), U(vm["id"]), U(tenant.token_id), instance, seen_ago)


async def channel(client, tenant: Tenant, name: str | None = None, **extra: Any) -> dict:
    body = {"project_id": tenant.project_id, "kind": "CHANNEL", "name": name or f"c-{uuid.uuid4().hex[:8]}", **extra}
    r = await client.post("/v1/conversations", headers=tenant.token_auth, json=body)
    assert r.status_code == 201, r.text
    return r.json()
