"""Shared machinery of the security tests: the catalog, snapshots, the OpenAPI walk,
generated bodies, the two-organization world, and the API role's raw-SQL context.

What the tests must know about particular tables and routes is in tests/support/factories.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from litestar.testing import AsyncTestClient

from tenant_api.auth.credentials import token_hash
from tenant_api.db.context import RESTRICTED_ROLE_SQL
from tests.support import factories
from tests.support.tenants import Tenant, signup

PROBLEM = "application/problem+json"
METHODS = ("get", "put", "post", "patch", "delete")


# --- catalog ---------------------------------------------------------------------------

TENANT_TABLES = """
    select c.relname
      from pg_class c
      join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'public' and c.relkind in ('r', 'p')
       and exists (select from pg_attribute a
                    where a.attrelid = c.oid and a.attname = 'organization_id' and not a.attisdropped)
     order by 1
"""


async def tenant_tables(conn: asyncpg.Connection) -> list[str]:
    """Every table in schema public with an organization_id column."""
    return [r["relname"] for r in await conn.fetch(TENANT_TABLES)]


async def isolated_tables(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(table, column holding the organization id): the tenant tables, and organization itself."""
    return [(t, "organization_id") for t in await tenant_tables(conn)] + [("organization", "id")]


def q(name: str) -> str:
    """A quoted identifier (names come from the catalog, quote them anyway)."""
    return '"' + name.replace('"', '""') + '"'


async def snapshot(conn: asyncpg.Connection, org: str) -> dict[str, str]:
    """Row count and md5 of the rows of one organization, per table (as the superuser)."""
    org_id = uuid.UUID(org)
    out: dict[str, str] = {}
    agg = "count(*)::text || ':' || coalesce(md5(string_agg(to_jsonb(x)::text, ',' order by to_jsonb(x)::text)), '')"
    for table, column in await isolated_tables(conn):
        out[table] = await conn.fetchval(f"select {agg} from public.{q(table)} x where {q(column)} = $1", org_id)
    out["user_account"] = await conn.fetchval(
        f"select {agg} from public.user_account x where id in "
        "(select user_id from public.organization_membership where organization_id = $1)",
        org_id,
    )
    return out


async def snapshot_all(conn: asyncpg.Connection) -> dict[str, str]:
    """Row count and md5 of every row of every tenant table (all organizations)."""
    agg = "count(*)::text || ':' || coalesce(md5(string_agg(to_jsonb(x)::text, ',' order by to_jsonb(x)::text)), '')"
    tables = [t for t, _ in await isolated_tables(conn)] + ["user_account"]
    return {t: await conn.fetchval(f"select {agg} from public.{q(t)} x") for t in tables}


async def row_ids(conn: asyncpg.Connection, table: str, org: str, limit: int = 5) -> list[str]:
    """Ids of an organization's rows of ``table``, oldest first (as the superuser)."""
    if table == "user_account":
        rows = await conn.fetch(
            "select id from user_account where id in (select user_id from organization_membership"
            " where organization_id = $1) order by id limit $2", uuid.UUID(org), limit)
    elif table == "organization":
        rows = await conn.fetch("select id from organization where id = $1", uuid.UUID(org))
    elif "[" in table:  # "<table>[<condition>]" (tests/support/factories.py PATH_PARAMS): those rows only
        table, condition = table[:-1].split("[", 1)
        rows = await conn.fetch(
            f"select id from public.{q(table)} x where x.organization_id = $1 and ({condition}) order by x.id"
            " limit $2", uuid.UUID(org), limit)
    elif "." in table:  # "<table>.<column>" (tests/support/factories.py PATH_PARAMS): that column, by row age
        table, column = table.split(".", 1)
        rows = await conn.fetch(
            f"select x.{q(column)} as id from public.{q(table)} x where x.organization_id = $1 order by x.id limit $2",
            uuid.UUID(org), limit)
    else:
        rows = await conn.fetch(
            f"select id from public.{q(table)} where organization_id = $1 order by id limit $2", uuid.UUID(org), limit)
    return [str(r["id"]) for r in rows]


async def all_ids(conn: asyncpg.Connection, org: str) -> set[str]:
    """Every id of every row belonging to an organization (its rows, its users)."""
    ids: set[str] = {org}
    for table in await tenant_tables(conn):
        ids |= {str(r["id"]) for r in await conn.fetch(
            f"select id from public.{q(table)} where organization_id = $1", uuid.UUID(org))}
    ids |= {str(r["user_id"]) for r in await conn.fetch(
        "select user_id from organization_membership where organization_id = $1", uuid.UUID(org))}
    return ids


async def tenant_refs(conn: asyncpg.Connection, tenant: Tenant) -> dict[str, str]:
    """table -> the tenant's oldest row of it, for every table UUID_FIELDS points at."""
    existing = set(await tenant_tables(conn)) | {"organization", "user_account"}
    refs: dict[str, str] = {}
    for table in sorted(set(factories.UUID_FIELDS.values()) & existing):
        if table == "user_account":
            refs[table] = tenant.user_id
        elif table == "platform_token":
            refs[table] = tenant.token_id
        else:
            ids = await row_ids(conn, table, tenant.organization_id, 1)
            if ids:
                refs[table] = ids[0]
    return refs


# --- OpenAPI ---------------------------------------------------------------------------


def openapi(client: AsyncTestClient) -> dict[str, Any]:
    return json.loads(json.dumps(client.app.openapi_schema.to_schema(), default=str))


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation) for every operation of the document."""
    return [(m.upper(), path, op) for path, item in doc["paths"].items() for m, op in item.items() if m in METHODS]


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def flatten(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The first non-null alternative of a oneOf/anyOf, with the outer constraints merged in."""
    schema = resolve(doc, schema)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            options = [resolve(doc, o) for o in schema[key]]
            chosen = next((o for o in options if o.get("type") != "null"), options[0])
            outer = {k: v for k, v in schema.items() if k != key}
            return flatten(doc, {**chosen, **outer})
    return schema


def schema_type(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return t


def request_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    body = op.get("requestBody")
    if not body:
        return None
    content = body.get("content", {})
    media = content.get("application/json") or next(iter(content.values()))
    return resolve(doc, media["schema"])


def path_parameters(op: dict[str, Any]) -> list[str]:
    return [p["name"] for p in op.get("parameters", []) if p.get("in") == "path"]


def fill_path(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def gen_string(name: str, schema: dict[str, Any], unique: str) -> str:
    value = factories.STRING_VALUES[name](unique) if name in factories.STRING_VALUES else f"{name}-{unique}"
    if "maxLength" in schema:
        value = value[: schema["maxLength"]]
    return value.ljust(schema.get("minLength", 0), "x")


def gen_value(doc: dict[str, Any], name: str, schema: dict[str, Any], refs: dict[str, str], unique: str,
              where: str) -> Any:
    s = flatten(doc, schema)
    if "enum" in s:
        return s["enum"][0]
    if "const" in s:  # a one-value Literal
        return s["const"]
    t, fmt = schema_type(s), s.get("format")
    if t == "string" and fmt == "uuid":
        table = factories.UUID_FIELDS.get(name)
        assert table is not None, (
            f"{where}: field {name!r} is a UUID the tests cannot fill; add {name!r} -> <table> to "
            "UUID_FIELDS in tests/support/factories.py")
        assert table in refs, f"{where}: field {name!r}: the tenant has no row in table {table!r}"
        return refs[table]
    if t == "string" and fmt == "date-time":
        return (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    if t == "string":
        return gen_string(name, s, unique)
    if t == "integer":
        return s.get("minimum", 1)
    if t == "number":
        return s.get("minimum", 1.0)
    if t == "boolean":
        return True
    if t == "array":
        return [gen_value(doc, name, s.get("items", {}), refs, unique, where)]
    if t == "object":
        return gen_body(doc, s, refs, unique, where) if "properties" in s else {}
    raise AssertionError(f"{where}: cannot generate a value for field {name!r} ({s}); "
                         "add it to BODY_OVERRIDES in tests/support/factories.py")


def gen_body(doc: dict[str, Any], schema: dict[str, Any], refs: dict[str, str], unique: str, where: str,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid body for ``schema``: every property filled (see tests/support/factories.py)."""
    schema = resolve(doc, schema)
    overrides = overrides or {}
    return {
        name: overrides[name] if name in overrides else gen_value(doc, name, prop, refs, unique, f"{where}.{name}")
        for name, prop in schema.get("properties", {}).items()
    }


def string_fields(doc: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, bool]]:
    """(field, is_array) for every free-text field of a body: strings that are neither
    enums nor UUIDs nor timestamps, and arrays of such strings."""
    out = []
    for name, prop in resolve(doc, schema).get("properties", {}).items():
        s = flatten(doc, prop)
        is_array = schema_type(s) == "array"
        if is_array:
            s = flatten(doc, s.get("items", {}))
        if (schema_type(s) == "string" and "enum" not in s and "const" not in s
                and s.get("format") not in {"uuid", "date-time", "date"}):
            out.append((name, is_array))
    return out


# --- responses -------------------------------------------------------------------------


def assert_problem(r: httpx.Response, status: int, detail_contains: str | None = None) -> dict[str, Any]:
    where = f"{r.request.method} {r.request.url.path}"
    assert r.status_code == status, f"{where}: expected {status}, got {r.status_code}: {r.text}"
    assert r.headers.get("content-type", "").startswith(PROBLEM), f"{where}: {r.headers.get('content-type')}"
    body = r.json()
    assert body["status"] == status and body["detail"], f"{where}: {body}"
    if detail_contains is not None:
        assert detail_contains in body["detail"], f"{where}: {detail_contains!r} not in {body['detail']!r}"
    return body


def uuids_in(value: Any) -> set[str]:
    """Every UUID-shaped string anywhere in a JSON document."""
    found: set[str] = set()
    if isinstance(value, dict):
        for v in value.values():
            found |= uuids_in(v)
    elif isinstance(value, list):
        for v in value:
            found |= uuids_in(v)
    elif isinstance(value, str):
        try:
            found.add(str(uuid.UUID(value)))
        except ValueError:
            pass
    return found


# --- the world: two organizations with a row in every tenant table ---------------------


@dataclass
class World:
    a: Tenant
    b: Tenant
    tables: list[str] = field(default_factory=list)


async def populate(client: AsyncTestClient, admin: asyncpg.Connection, tenant: Tenant) -> None:
    """At least one row of the tenant in every table: RESOURCES creates, then ROW_FACTORIES."""
    doc = openapi(client)
    for collection, table in factories.resource_paths().items():
        op = doc["paths"].get(collection, {}).get("post")
        if op is None or table in factories.ROW_FACTORIES:
            continue
        schema = request_schema(doc, op)
        assert schema is not None, f"POST {collection} has no request body"
        refs = await tenant_refs(admin, tenant)
        path = await own_path(admin, tenant, collection, op)
        body = gen_body(doc, schema, refs, uuid.uuid4().hex[:8], f"POST {collection}",
                        factories.BODY_OVERRIDES.get(("POST", collection)))
        r = await client.post(path, headers=tenant.token_auth, json=body)
        assert r.status_code == 201, (
            f"creating a {table} row with POST {collection} {body} failed ({r.status_code}: {r.text}); "
            "fix UUID_FIELDS/BODY_OVERRIDES or add a ROW_FACTORIES entry in tests/support/factories.py")
    for factory in factories.ROW_FACTORIES.values():
        await factory(client, tenant, await tenant_refs(admin, tenant))


async def own_path(admin: asyncpg.Connection, tenant: Tenant, template: str, op: dict[str, Any],
                   newest: bool = False) -> str:
    """``template`` with each path parameter set to one of the tenant's own rows of the
    mapped table (the oldest, or the newest)."""
    params = path_parameters(op)
    if not params:
        return template
    mapping = factories.path_params(template) or {}
    missing = [p for p in params if p not in mapping]
    assert not missing, (f"{template}: path parameters {missing} cannot be mapped to tables; "
                         "add the path to PATH_PARAMS in tests/support/factories.py")
    values = {}
    for p in params:
        ids = await row_ids(admin, mapping[p], tenant.organization_id, 1000)
        assert ids, f"{template}: the tenant has no {mapping[p]} row for {{{p}}}; add a ROW_FACTORIES entry"
        values[p] = ids[-1] if newest else ids[0]
    return fill_path(template, values)


async def assert_covered(admin: asyncpg.Connection, tenants: list[Tenant]) -> list[str]:
    """Every tenant table has a row of every tenant, or the test names the missing factory."""
    tables = await tenant_tables(admin)
    missing = [
        f"{table} (organization {t.organization_id})"
        for table in tables for t in tenants
        if not await admin.fetchval(f"select exists (select from public.{q(table)} where organization_id = $1)",
                                    uuid.UUID(t.organization_id))
    ]
    assert not missing, (
        "no rows in " + ", ".join(missing) + ": add a row factory for each such table to ROW_FACTORIES "
        "in tests/support/factories.py (create the row through the HTTP API if a route exists), so the "
        "isolation tests cover it")
    return tables


async def settle_usage(client: AsyncTestClient) -> None:
    """Wait until every request so far has its usage record written (they are written
    by a thread of their own, a moment later): the snapshots taken next must not change
    under the tests because of requests made before them."""
    recorder = getattr(client.app.state, "usage", None)
    if recorder is not None:
        assert await asyncio.to_thread(recorder.flush), "usage records not written within the timeout"


async def build_world(client: AsyncTestClient, admin: asyncpg.Connection, label: str) -> World:
    a = await signup(client, f"{label}a{uuid.uuid4().hex[:6]}")
    b = await signup(client, f"{label}b{uuid.uuid4().hex[:6]}")
    for tenant in (a, b):
        await populate(client, admin, tenant)
    await settle_usage(client)
    return World(a=a, b=b, tables=await assert_covered(admin, [a, b]))


# --- the API role over raw SQL ---------------------------------------------------------

BEGIN_REQUEST = "select * from auth.begin_request($1::bytea, null, null, 'test')"


async def begin_request(conn: asyncpg.Connection, token: str) -> asyncpg.Record:
    """Inside an open transaction: set the context of an API token, as the API does
    (a project-restricted one then runs as tenant_api_projects: RESTRICTED_ROLE_SQL)."""
    row = await conn.fetchrow(BEGIN_REQUEST, token_hash(token))
    assert row["status"] == "ok", dict(row)
    if row["project_ids"] is not None:
        await conn.execute(RESTRICTED_ROLE_SQL)
    return row


@asynccontextmanager
async def as_request(conn: asyncpg.Connection, token: str) -> AsyncIterator[asyncpg.Record]:
    """A transaction with ``token``'s context, always rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        yield await begin_request(conn, token)
    finally:
        await tx.rollback()


async def attempt(conn: asyncpg.Connection, sql: str, *args: Any) -> tuple[str | None, str | None]:
    """Run ``sql`` in a savepoint (or its own transaction): (status, None) or (None, sqlstate)."""
    try:
        async with conn.transaction():
            return await conn.execute(sql, *args), None
    except asyncpg.PostgresError as exc:
        return None, exc.sqlstate


def insert_copy_sql(table: str, columns: list[str] | None = None) -> str:
    """INSERT one row given as JSON (as the table's row type): all columns, or only
    ``columns`` (a table with generated columns: their values are computed, never given)."""
    if columns is None:
        return f"insert into public.{q(table)} select * from json_populate_record(null::public.{q(table)}, $1::json)"
    cols = ", ".join(q(c) for c in columns)
    return (f"insert into public.{q(table)} ({cols})"
            f" select {cols} from json_populate_record(null::public.{q(table)}, $1::json)")


async def generated_columns(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """The table's generated columns -> their expressions."""
    rows = await conn.fetch(
        "select a.attname, pg_get_expr(d.adbin, d.adrelid) as expr from pg_attribute a"
        " join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum"
        " where a.attrelid = $1::regclass and a.attgenerated <> '' and not a.attisdropped", f"public.{table}")
    return {r["attname"]: r["expr"] for r in rows}


async def some_row(conn: asyncpg.Connection, table: str, column: str, org: str,
                   not_null: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """One of ``org``'s rows of ``table`` as JSON (one whose ``not_null`` columns are set)."""
    extra = "".join(f" and {q(c)} is not null" for c in not_null)
    raw = await conn.fetchval(
        f"select to_jsonb(x)::text from public.{q(table)} x where {q(column)} = $1{extra} order by x::text limit 1",
        uuid.UUID(org))
    which = f" with {list(not_null)} set" if not_null else ""
    assert raw is not None, f"{table}: no row of organization {org}{which}: add a ROW_FACTORIES entry in tests/support/factories.py"
    return json.loads(raw)
