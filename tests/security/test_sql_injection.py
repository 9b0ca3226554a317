"""Hostile strings in every free-text field of every request body and query string of the
OpenAPI document: never a 500, and stored verbatim when accepted."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support import factories
from tests.support.tenants import Tenant, signup
from tests.support.security import (
    PROBLEM,
    flatten,
    gen_body,
    openapi,
    operations,
    populate,
    request_schema,
    own_path,
    schema_type,
    string_fields,
    tenant_refs,
    tenant_tables,
)

PAYLOADS = [
    "x'); drop table agent; --",
    "' or 1=1 --",
    "\" or \"\"=\"",
    "'; delete from workspace where ''='",
    "1; select pg_sleep(3); --",
    "$$; drop table project; $$",
    "%' and '%'='",
    "\\'; drop table token_audit_log; --",
    "o'brien'--@example.com",
    "null",
    "ünïcødé ☃ 𝔘 \u202e",
    "nul\u0000byte",
]


@pytest.fixture(scope="module", autouse=True)
def cheap_password_hashing():
    """Signup and login hash every hostile password with argon2id (~0.3 s each here): use
    minimal parameters for this module only. Verification reads the parameters from the
    stored hash, so existing accounts keep working."""
    from argon2 import PasswordHasher

    from tenant_api.auth import passwords

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(passwords, "_hasher", cheap)
        mp.setattr(passwords, "_DUMMY_HASH", cheap.hash("not a password"))
        yield


@pytest.fixture(scope="module")
async def tenant(client, module_admin) -> Tenant:
    tenant = await signup(client, f"sqli{uuid.uuid4().hex[:8]}")
    await populate(client, module_admin, tenant)
    return tenant


def find(body: Any, field: str) -> list[Any]:
    """Values of ``field`` anywhere in a JSON document."""
    found = []
    if isinstance(body, dict):
        for k, v in body.items():
            if k == field:
                found.append(v)
            found += find(v, field)
    elif isinstance(body, list):
        for v in body:
            found += find(v, field)
    return found


async def test_hostile_strings_in_bodies(client, module_admin, tenant):
    doc = openapi(client)
    refs = await tenant_refs(module_admin, tenant)
    tables_before = await tenant_tables(module_admin)
    failures, accepted, checked = [], 0, 0
    for method, template, op in operations(doc):
        schema = request_schema(doc, op)
        if schema is None:
            continue
        path = await own_path(module_admin, tenant, template, op)
        overrides = factories.BODY_OVERRIDES.get((method, template))
        for field, is_array in string_fields(doc, schema):
            for payload in PAYLOADS:
                value = f"{payload} {uuid.uuid4().hex[:6]}"
                body = gen_body(doc, schema, refs, uuid.uuid4().hex[:8], f"{method} {template}", overrides)
                body[field] = [value] if is_array else value
                r = await client.request(method, path, headers=tenant.token_auth, json=body)
                checked += 1
                where = f"{method} {template} {field}={value!r}"
                if r.status_code >= 500:
                    failures.append(f"{where}: {r.status_code} {r.text[:200]}")
                    continue
                if r.status_code >= 400:
                    if not r.headers.get("content-type", "").startswith(PROBLEM):
                        failures.append(f"{where}: {r.status_code} without problem+json")
                    continue
                accepted += 1
                if field == "password" and template == "/v1/auth/signup":
                    login = await client.post("/v1/auth/login", json={"email": body["email"], "password": value})
                    if login.status_code != 200:
                        failures.append(f"{where}: cannot log in with the password just set")
                    continue
                echoed = find(r.json(), field)
                if not echoed or echoed[0] != body[field]:
                    failures.append(f"{where}: response has {echoed!r}")
                    continue
                # ... and read back from the database through the API
                item_id = r.json().get("id") if isinstance(r.json(), dict) else None
                read_path = path if method == "PATCH" else f"{template.rstrip('/')}/{item_id}"
                if item_id and ("get" in doc["paths"].get(read_path, {}) or method == "PATCH"):
                    back = await client.get(path if method == "PATCH" else f"{path.rstrip('/')}/{item_id}",
                                            headers=tenant.token_auth)
                    if back.status_code == 200 and find(back.json(), field)[:1] != [body[field]]:
                        failures.append(f"{where}: read back {find(back.json(), field)!r}")
    assert not failures, "\n".join(failures)
    assert checked > 50 and accepted > 20, (checked, accepted)  # the hostile strings were stored, not just refused
    assert await tenant_tables(module_admin) == tables_before


async def test_hostile_strings_in_query_parameters(client, module_admin, tenant):
    doc = openapi(client)
    failures, checked = [], 0
    for method, template, op in operations(doc):
        if method != "GET":
            continue
        path = await own_path(module_admin, tenant, template, op)
        for p in op.get("parameters", []):
            s = flatten(doc, p.get("schema", {}))
            if p.get("in") != "query" or schema_type(s) != "string" or "enum" in s or s.get("format"):
                continue
            for payload in PAYLOADS:
                r = await client.get(path, headers=tenant.token_auth, params={p["name"]: payload})
                checked += 1
                if r.status_code >= 500:
                    failures.append(f"GET {template}?{p['name']}={payload!r}: {r.status_code} {r.text[:200]}")
                elif r.status_code == 200 and "items" in r.json() and p["name"] != "cursor":
                    if r.json()["items"]:
                        failures.append(f"GET {template}?{p['name']}={payload!r} matched rows: {r.json()['items'][:1]}")
                elif r.status_code != 200 and not r.headers.get("content-type", "").startswith(PROBLEM):
                    failures.append(f"GET {template}?{p['name']}={payload!r}: {r.status_code} without problem+json")
    assert not failures, "\n".join(failures)
    assert checked >= 5 * len(PAYLOADS), checked
