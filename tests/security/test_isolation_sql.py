"""Isolation as the API role over raw SQL, for every table in the catalog.

Two organizations get a row in every tenant table (tests/support/factories.py). Then, connected as
tenant_api with organization A's context set by auth.begin_request (exactly what the API
does at the start of each request), nothing of organization B can be seen, updated,
deleted or created; and with no context at all, nothing can be seen or created.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import uuid
from typing import Any

import asyncpg
import pytest

from tests.support import factories
from tests.support.security import (
    World,
    as_request,
    attempt,
    begin_request,
    build_world,
    generated_columns,
    insert_copy_sql,
    isolated_tables,
    q,
    snapshot,
    some_row,
)

DENIED = "42501"  # insufficient_privilege: RLS WITH CHECK violation or a missing grant
FK_VIOLATION = "23503"


@pytest.fixture(scope="module")
async def world(client, module_admin) -> World:
    return await build_world(client, module_admin, "isql")


async def updatable_column(admin: asyncpg.Connection, table: str) -> str | None:
    """A column tenant_api may UPDATE, or None if it may update none."""
    return await admin.fetchval(
        "select a.attname from pg_attribute a where a.attrelid = $1::regclass and a.attnum > 0"
        " and not a.attisdropped and has_column_privilege('tenant_api', a.attrelid, a.attnum, 'UPDATE')"
        " order by a.attnum limit 1", f"public.{table}")


import tenant_api.app  # noqa: E402,F401  (imports every resource module, registering its lifecycle)
from tenant_api.resources.lifecycle import LIFECYCLES  # noqa: E402


async def copy_of(admin: asyncpg.Connection, table: str, column: str, org: str, **changes: Any) -> dict[str, Any]:
    """One of ``org``'s rows of ``table`` as JSON, with a fresh id (so only what we change
    differs), without its generated columns (an INSERT cannot give those), and in its
    lifecycle's initial status (a row is never inserted further along: the database's
    status guard would refuse it before RLS is even asked)."""
    row = await some_row(admin, table, column, org)
    for name in await generated_columns(admin, table):
        row.pop(name, None)
    if table in LIFECYCLES:
        row["status"] = LIFECYCLES[table].initial
    row.update(factories.PRISTINE.get(table, {}))
    if column != "id":
        row["id"] = str(uuid.uuid4())
    row.update(changes)
    return row


def insert_sql(table: str, row: dict[str, Any]) -> str:
    return insert_copy_sql(table, list(row))


async def test_every_table_has_rows_for_both_organizations(world, module_admin):
    # build_world already failed with a "add a row factory" message if not; this states it.
    for table, column in await isolated_tables(module_admin):
        for t in (world.a, world.b):
            assert await module_admin.fetchval(
                f"select count(*) from public.{q(table)} where {q(column)} = $1", uuid.UUID(t.organization_id)), table


async def test_other_organization_invisible_and_untouchable(world, module_admin, api_conn):
    a, b = world.a, world.b
    b_org = uuid.UUID(b.organization_id)
    before = await snapshot(module_admin, b.organization_id)
    problems: list[str] = []
    tables = await isolated_tables(module_admin)
    assert len(tables) >= 7, tables
    for table, column in tables:
        t = f"public.{q(table)}"
        col = await updatable_column(module_admin, table)
        b_copy = await copy_of(module_admin, table, column, b.organization_id)
        async with as_request(api_conn, a.token):
            # The context works: A's own rows are visible (so 0 rows of B means something).
            if not await api_conn.fetchval(f"select count(*) from {t} where {q(column)} = $1",
                                           uuid.UUID(a.organization_id)):
                problems.append(f"{table}: A sees none of its own rows (the check below would be vacuous)")
            if n := await api_conn.fetchval(f"select count(*) from {t} where {q(column)} = $1", b_org):
                problems.append(f"{table}: {n} rows of B visible")
            if n := await api_conn.fetchval(f"select count(*) from {t} where {q(column)} <> $1",
                                            uuid.UUID(a.organization_id)):
                problems.append(f"{table}: {n} rows of other organizations visible")

            if col is None:
                status, err = await attempt(api_conn, f"update {t} set {q(column)} = {q(column)} where {q(column)} = $1",
                                            b_org)
                if err != DENIED:
                    problems.append(f"{table}: UPDATE without any update grant gave {status or err}")
            else:
                for sql, args in (
                    (f"update {t} set {q(col)} = {q(col)} where {q(column)} = $1", (b_org,)),
                    (f"update {t} set {q(col)} = {q(col)}", ()),  # no filter: must reach A's rows only
                ):
                    status, err = await attempt(api_conn, sql, *args)
                    if err is None and sql.endswith("$1") and status != "UPDATE 0":
                        problems.append(f"{table}: UPDATE of B's rows: {status}")
                    elif err not in (None, DENIED):
                        problems.append(f"{table}: UPDATE of B's rows failed oddly: {err}")
            status, err = await attempt(api_conn, f"delete from {t} where {q(column)} = $1", b_org)
            if not (status == "DELETE 0" or err == DENIED):
                problems.append(f"{table}: DELETE of B's rows: {status or err}")

            status, err = await attempt(api_conn, insert_sql(table, b_copy), json.dumps(b_copy))
            if err != DENIED:
                problems.append(f"{table}: INSERT of a row with B's organization: {status or err} (expected {DENIED})")
        assert await snapshot(module_admin, b.organization_id) == before, f"B's rows changed while testing {table}"
    assert not problems, "\n".join(problems)


async def composite_foreign_keys(admin: asyncpg.Connection, tables: list[str]) -> list[asyncpg.Record]:
    return await admin.fetch(
        """
        select k.conname, c.relname as child, p.relname as parent,
               array(select a.attname from unnest(k.conkey) with ordinality u(n, o)
                       join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.n order by u.o) as child_cols,
               array(select a.attname from unnest(k.confkey) with ordinality u(n, o)
                       join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.n order by u.o) as parent_cols
          from pg_constraint k
          join pg_class c on c.oid = k.conrelid
          join pg_class p on p.oid = k.confrelid
         where k.contype = 'f' and c.relnamespace = 'public'::regnamespace and c.relname = any($1::text[])
        """, tables)


async def test_tenant_foreign_keys_are_composite(world, module_admin):
    """A foreign key from a tenant table to another tenant table includes organization_id,
    so a child can never point into another organization."""
    tables = world.tables
    bad = [f"{fk['conname']} {fk['child_cols']} -> {fk['parent']}{fk['parent_cols']}"
           for fk in await composite_foreign_keys(module_admin, tables)
           if fk["parent"] in tables and not (fk["child_cols"][0] == "organization_id"
                                              and fk["parent_cols"][0] == "organization_id")]
    assert not bad, bad


async def column_types(admin: asyncpg.Connection, table: str) -> dict[str, str]:
    return dict(await admin.fetch(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute"
        " where attrelid = $1::regclass and attnum > 0 and not attisdropped", f"public.{table}"))


async def unique_key_columns(admin: asyncpg.Connection, table: str) -> dict[str, str]:
    """Columns in the keys of the table's unique indexes (expression keys too, e.g.
    lower(email); not a partial index's predicate) -> their type."""
    rows = await admin.fetch(
        "select pg_get_indexdef(i.indexrelid, k, true) as key from pg_index i,"
        " generate_series(1, i.indnkeyatts) k where i.indrelid = $1::regclass and i.indisunique", f"public.{table}")
    columns = await column_types(admin, table)
    return {c: t for c, t in columns.items()
            if any(re.search(rf'(^|[^\w"]){re.escape(c)}($|[^\w"])|"{re.escape(c)}"', r["key"]) for r in rows)}


def fresh_value(kind: str, value: Any) -> Any:
    """Another value of the same type, for a unique column (None: leave it)."""
    if value is None:
        return None
    if kind in ("text", "citext") or kind.startswith("character"):
        return f"{value}-{uuid.uuid4().hex[:6]}"
    if kind == "bytea":  # as JSON renders it: \x and hex digits; same length (a digest's length is checked)
        return "\\x" + secrets.token_hex((len(value) - 2) // 2)
    if kind in ("integer", "bigint", "smallint"):
        return random.randint(10_000, 30_000)
    if kind == "uuid":
        return str(uuid.uuid4())
    return value


async def user_bound_columns(admin: asyncpg.Connection, table: str) -> set[str]:
    """Columns the table's INSERT policies tie to the caller's user or token (``user_id =
    app.current_user_id()``, ``token_id = app.current_token_id()``)."""
    checks = await admin.fetch(
        "select coalesce(with_check, '') as c from pg_policies where schemaname = 'public' and tablename = $1"
        " and cmd in ('INSERT', 'ALL')", table)
    # user_id = (SELECT app.current_user_id() ...), and rows tied to the caller's token
    call = r"(\w+) = \(?\s*(?:SELECT\s+)?(?:app\.)?current_(?:user|token)_id\(\)"
    return {m for r in checks for m in re.findall(call, r["c"], re.IGNORECASE)}


async def test_child_cannot_point_at_another_organizations_parent(world, module_admin, api_conn):
    """A copy of one of A's child rows, pointed at B's parent (every column of the foreign
    key but organization_id taken from B's row), is refused by that very foreign key; the
    same copy left pointing at its own parent in A is accepted (the control). Each copy
    is inserted, as A, in a savepoint rolled back at once, after deleting the row it
    copies there if A may (so a 1:1 child or a globally unique hash does not collide;
    otherwise its unique values are made fresh)."""
    a, b = world.a, world.b
    a_org = uuid.UUID(a.organization_id)
    fks = [fk for fk in await composite_foreign_keys(module_admin, world.tables)
           if fk["parent"] in world.tables and len(fk["child_cols"]) > 1]
    assert {(fk["child"], fk["parent"]) for fk in fks} >= {("project", "workspace"), ("agent", "project")}, fks
    problems = []
    for fk in fks:
        child, parent, name = fk["child"], fk["parent"], fk["conname"]
        if not await module_admin.fetchval("select has_table_privilege('tenant_api', $1, 'INSERT')", f"public.{child}"):
            continue  # the API role cannot insert into it at all
        generated = await generated_columns(module_admin, child)
        uniques = await unique_key_columns(module_admin, child)
        pairs = [(c, p) for c, p in zip(fk["child_cols"], fk["parent_cols"]) if c != "organization_id"]
        # A foreign key over a generated column (conversation_member.agent_id, computed
        # from member_id) is pointed through the uuid column its expression reads; the
        # copied row must be one where it is set (an AGENT member).
        source = {}
        for c, _ in pairs:
            if c in generated:
                read = [col for col, kind in (await column_types(module_admin, child)).items()
                        if kind == "uuid" and col not in generated and re.search(rf"\b{col}\b", generated[c])]
                if len(read) != 1:
                    problems.append(f"{child}.{c} is generated from {read or 'no uuid column'}: cannot point it")
                    break
                source[c] = read[0]
        else:
            # A row whose foreign key columns are all set: one with a null among them (an
            # organization invite's mail has no project) does not exercise the key.
            try:
                original = await some_row(module_admin, child, "organization_id", a.organization_id,
                                          not_null=[c for c, _ in pairs])
            except AssertionError:  # none has every one set (job.schedule_id): as before
                original = await some_row(module_admin, child, "organization_id", a.organization_id,
                                          not_null=[c for c, _ in pairs if c in generated])
            fk_columns = {c for other in fks if other["child"] == child for c in other["child_cols"]}
            base = {k: v for k, v in original.items() if k not in generated}
            if child in LIFECYCLES:  # inserted rows start in the initial status (see copy_of)
                base["status"] = LIFECYCLES[child].initial
            base.update(factories.PRISTINE.get(child, {}))

            async def insert(row: dict[str, Any]) -> tuple[str | None, asyncpg.PostgresError | None]:
                row = {**row, "id": str(uuid.uuid4())}
                tx = api_conn.transaction()
                await tx.start()
                try:
                    try:
                        async with api_conn.transaction():
                            deleted = await api_conn.execute(
                                f"delete from public.{q(child)} where organization_id = $1 and id = $2",
                                a_org, uuid.UUID(original["id"])) == "DELETE 1"
                    except asyncpg.PostgresError:
                        deleted = False
                    if not deleted:
                        for col, kind in uniques.items():
                            if col in row and col not in fk_columns and col not in ("id", "organization_id"):
                                row[col] = fresh_value(kind, row[col])
                    try:
                        async with api_conn.transaction():
                            return await api_conn.execute(insert_sql(child, row), json.dumps(row)), None
                    except asyncpg.PostgresError as exc:
                        return None, exc
                finally:
                    await tx.rollback()

            b_parent = await some_row(module_admin, parent, "organization_id", b.organization_id)
            pointing_at_b = {**base, **{source.get(c, c): b_parent[p] for c, p in pairs}}
            user_bound = await user_bound_columns(module_admin, child) & {c for c, _ in pairs}
            async with as_request(api_conn, a.token):
                status, exc = await insert(base)  # control: its own parent, in A
                if status != "INSERT 0 1":
                    problems.append(f"{child}: control insert (parent in A) failed: {exc.sqlstate}: {exc}")
                status, exc = await insert(pointing_at_b)
                # The foreign key itself, or a sibling sharing a repointed column (project_id)
                # if PostgreSQL happens to check that one first: never any other refusal.
                repointed = {source.get(c, c) for c, _ in pairs} | {c for c, _ in pairs}
                siblings = {other["conname"] for other in fks if other["child"] == child
                            and set(other["child_cols"]) & repointed}
                if exc is not None and exc.sqlstate == FK_VIOLATION and exc.constraint_name in siblings | {name}:
                    pass
                elif exc is not None and exc.sqlstate == DENIED and user_bound:
                    pass  # B's parent names B's user: the policy tying these rows to the
                    #       caller's user refuses the row before the foreign key is checked
                elif exc is not None and exc.sqlstate == DENIED and await refused_by_key_alone(
                        module_admin, child, pointing_at_b, siblings | {name}):
                    pass  # the policy reads the parent (a DM's members and messages: is the
                    #       caller one of its members?) and refuses first; without RLS, the
                    #       foreign key alone still refuses the same row
                else:
                    problems.append(f"{child}: row of A pointing at B's {parent} via {name}: "
                                    f"{status or f'{exc.sqlstate} {exc.constraint_name or exc}'}")
    assert not problems, "\n".join(problems)


async def refused_by_key_alone(admin: asyncpg.Connection, table: str, row: dict[str, Any], keys: set[str]) -> bool:
    """The row inserted by a superuser (no RLS), rolled back: refused by one of ``keys``."""
    tx = admin.transaction()
    await tx.start()
    try:
        row = {**row, "id": str(uuid.uuid4())}
        await admin.execute(insert_sql(table, row), json.dumps(row))
    except asyncpg.PostgresError as exc:
        return exc.sqlstate == FK_VIOLATION and exc.constraint_name in keys
    finally:
        await tx.rollback()
    return False


async def assert_sees_nothing(api_conn: asyncpg.Connection, admin: asyncpg.Connection, world: World) -> None:
    problems = []
    for table, column in await isolated_tables(admin):
        if n := await api_conn.fetchval(f"select count(*) from public.{q(table)}"):
            problems.append(f"{table}: {n} rows visible without a context")
        row = await copy_of(admin, table, column, world.a.organization_id)
        status, err = await attempt(api_conn, insert_sql(table, row), json.dumps(row))
        if err != DENIED:
            problems.append(f"{table}: insert without a context: {status or err}")
    if n := await api_conn.fetchval("select count(*) from public.user_account"):
        problems.append(f"user_account: {n} rows visible without a context")
    assert not problems, "\n".join(problems)


async def test_fresh_connection_sees_nothing(world, module_admin, api_conn):
    assert await api_conn.fetchval("select current_setting('backtrace_functions')") == ""
    await assert_sees_nothing(api_conn, module_admin, world)


@pytest.mark.parametrize("end", ["commit", "rollback"])
async def test_context_vanishes_when_the_transaction_ends(world, module_admin, api_conn, end):
    tx = api_conn.transaction()
    await tx.start()
    await begin_request(api_conn, world.a.token)
    assert await api_conn.fetchval("select count(*) from agent") > 0  # the context was there
    await (tx.commit() if end == "commit" else tx.rollback())
    # After the transaction the parameter is back to its empty default: no context.
    assert await api_conn.fetchval("select current_setting('backtrace_functions')") == ""
    assert await api_conn.fetchval("select app.current_project_ids()") == []
    assert await api_conn.fetchval("select current_user") == "tenant_api"
    await assert_sees_nothing(api_conn, module_admin, world)
    # ... also inside a new explicit transaction that did not call begin_request
    async with api_conn.transaction():
        assert await api_conn.fetchval("select count(*) from agent") == 0


async def test_user_accounts_of_other_organizations_invisible(world, api_conn):
    b_user = uuid.UUID(world.b.user_id)
    async with as_request(api_conn, world.a.token):
        assert await api_conn.fetchval("select count(*) from user_account where id = $1", uuid.UUID(world.a.user_id)) == 1
        assert await api_conn.fetchval("select count(*) from user_account where id = $1", b_user) == 0
        status, err = await attempt(api_conn, "update user_account set display_name = 'pwned' where id = $1", b_user)
        assert (status, err) == ("UPDATE 0", None)
