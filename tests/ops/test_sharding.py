"""Sharding readiness: when one PostgreSQL is outgrown, the tenant tables are distributed
by organization_id (Citus; docs/sharding.md). Two things must already be true for that,
and both are checked here against the real schema and the real application:

1. Keys. Every primary key, unique constraint, unique index and exclusion constraint of
   a tenant table includes organization_id (a distributed table can only enforce
   uniqueness within a shard), and every foreign key either pairs organization_id with
   its parent's distribution column (a colocated key) or points at a reference table.
   What does not is named below with its reason.
2. Statements. A representative scenario runs through the real app while every statement
   it sends is recorded (SQLAlchemy's cursor events and asyncpg's query logger on the
   app's own pool); the statements are then EXPLAINed, with the values they were sent
   with, as a superuser (so no policy adds a filter: a distributed planner routes on the
   statement's own filter, never on a row policy) in a database of their own whose tenant
   tables are hash-partitioned by organization_id, each with a custom and a generic plan.
   Every statement touching a tenant table must touch exactly one partition of each, the
   same one for all (colocation), pruned by the plan itself (custom plan) or at executor
   start from its parameters (generic plan); every INSERT must name the organization as
   a value. The definer functions statements call are opaque to EXPLAIN: each one the
   code calls is classified in FUNCTIONS, single-organization or spanning organizations
   by design, with the reason.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import event

from tenant_api.app import create_app
from tenant_api.db import migrate
from tenant_api.db.bootstrap import bootstrap
from tenant_api.settings import Settings, asyncpg_url
from tests.support import factories
from tests.support.database import Database, connect
from tests.support.tenants import bearer, make_token, signup
from tests.support.security import (
    gen_body,
    openapi,
    operations,
    own_path,
    populate,
    q,
    request_schema,
    settle_usage,
    tenant_refs,
    tenant_tables,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "tenant_api"

# The distribution column of organization itself: its id (colocated with every tenant
# table, so a join of an organization with its rows stays on one shard).
DISTRIBUTED_BY_ID = {"organization"}

# Tables without organization_id that tenant tables may reference: Citus reference tables
# (a full copy on every node), so a foreign key into one never leaves the shard.
REFERENCE_TABLES = {
    # A person belongs to many organizations (memberships, invites, tokens, service
    # accounts point at them); the email address is unique across all of them.
    "user_account": "people span organizations; email is globally unique",
}

# Unique indexes of tenant tables that do not include organization_id. Each serves a
# lookup made before any organization is known, by a secret's SHA-256; a distributed table
# cannot enforce them across shards, so on Citus they become plain indexes (the hash of a
# 256-bit random secret does not collide) or move to a lookup table (docs/sharding.md).
GLOBAL_UNIQUE_INDEXES = {
    "platform_token_hash_key": "auth.begin_request finds an API token by its hash",
    "project_invite_token_hash_key": "auth.accept_invite / invite_preview find an invite by the inviter's secret",
    "project_invite_mail_token_hash_key": "... and by the mail's secret",
}

# Every definer function the code calls, by name: "organization" when it works inside one
# organization (given as an argument, or the request's own context), else why it spans
# organizations by design. On Citus the first kind becomes a distributed function routed
# by its organization argument or runs its statements with an explicit organization
# filter; the second kind is what docs/sharding.md lists as changing.
FUNCTIONS: dict[str, str] = {
    # credentials, before any organization is known
    "auth.begin_request": "spans: finds the credential by its hash (API tokens) or session id, then reads its "
                          "organization's memberships",
    "auth.login_lookup": "spans: a user by email (reference table) and their organizations",
    "auth.create_session": "spans: the user's memberships in any organization, then one session row",
    "auth.signup": "spans: a new user (reference table) and a new organization",
    "auth.verify_email": "spans: the user by the verification secret's hash (reference table)",
    "auth.invite_preview": "spans: an invite by its secret's hash (global unique index)",
    "auth.accept_invite": "spans: an invite by its secret's hash, then a membership in the inviting organization",
    "auth.issue_verification": "organization: the request's own user (reference table) and its outbox row",
    "auth.my_organizations": "spans: the user's memberships in every organization",
    "auth.create_service_user": "organization: a user row (reference table) for the request's organization",
    "auth.rate_limit_of": "organization: one organization's quota (by id)",
    "auth.enabled_schedule_count": "organization: the request's own enabled schedules (the quota)",
    "auth.set_rate_limit": "organization: one organization's quota (by id; operators)",
    # background duties: queues over every organization
    "auth.claim_due_schedules": "spans: the scheduler claims due schedules of every organization",
    "auth.fire_schedule": "organization: fires one schedule of the organization it is given",
    "auth.claim_invite_mail": "spans: the mailer claims due mail of every organization",
    "auth.finish_invite_mail": "organization: records one mail's outcome (organization given)",
    "auth.reap_desktop_connections": "spans: closes stale robot connections of every organization",
    "auth.purge_finished_jobs": "spans: retention deletes old rows of every organization",
    "auth.purge_closed_desktop_connections": "spans: retention, every organization",
    "auth.purge_sent_invite_mails": "spans: retention, every organization",
    "app.purge_security_events": "spans: retention of unattributed security events (no organization)",
    "auth.requeue_expired_runs": "spans: the lease reaper requeues expired claims of every organization",
    "auth.claim_webhook_deliveries": "spans: the delivery worker claims due deliveries of every organization",
    "auth.webhook_delivery_context": "organization: one delivery's webhook, as its owning credential",
    "auth.finish_webhook_delivery": "organization: records one delivery attempt's outcome (organization given)",
    "auth.purge_webhook_deliveries": "spans: retention, every organization",
    "auth.purge_idempotency_keys": "spans: expired Idempotency-Key records of every organization",
    "app.record_usage": "spans: one batch of usage records of many organizations (one row each)",
    "app.audit_seal_candidates": "spans: which organizations have events to seal",
    "app.audit_seal": "organization: seals one organization's trail (given)",
    "app.audit_purge_candidates": "spans: which organizations have blocks past retention",
    "app.audit_purge": "organization: purges one organization's sealed blocks (given)",
}

# Where the code calls SQL functions (statements in Python strings).
CALL = re.compile(r"\b((?:auth|app)\.[a-z_]+)\s*\(")
NAMED = re.compile(r"^((?:auth|app)\.(?!sql$)[a-z_]+)$")  # a function's name alone (ops/retention.py)


# --- 1. keys -----------------------------------------------------------------------------

KEYS_SQL = """
    select c.relname as tbl, k.conname as name, k.contype::text as kind, pg_get_constraintdef(k.oid) as def,
           array(select a.attname from unnest(k.conkey) with ordinality u(n, o)
                   join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.n order by u.o) as cols,
           p.relname as parent,
           array(select a.attname from unnest(k.confkey) with ordinality u(n, o)
                   join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.n order by u.o) as parent_cols
      from pg_constraint k
      join pg_class c on c.oid = k.conrelid
      left join pg_class p on p.oid = k.confrelid
     where c.relnamespace = 'public'::regnamespace and k.contype in ('p', 'u', 'x', 'f')
"""

UNIQUE_INDEXES_SQL = """
    select c.relname as tbl, i.relname as name, pg_get_indexdef(x.indexrelid) as def,
           array(select a.attname from unnest(x.indkey) n join pg_attribute a on a.attrelid = x.indrelid
                  and a.attnum = n) as cols
      from pg_index x
      join pg_class c on c.oid = x.indrelid
      join pg_class i on i.oid = x.indexrelid
     where c.relnamespace = 'public'::regnamespace and x.indisunique
       and not exists (select from pg_constraint k where k.conindid = x.indexrelid and k.contype in ('p', 'u', 'x'))
"""


def distribution_columns(tables: list[str]) -> dict[str, str]:
    """Distributed table -> its distribution column."""
    return {**dict.fromkeys(tables, "organization_id"), **dict.fromkeys(DISTRIBUTED_BY_ID, "id")}


async def test_every_key_of_a_tenant_table_includes_organization_id(admin_conn):
    distributed = distribution_columns(await tenant_tables(admin_conn))
    assert {"agent", "platform_token", "token_audit_log", "organization"} <= set(distributed)
    assert not set(REFERENCE_TABLES) & set(distributed)
    problems: list[str] = []
    checked = {"p": 0, "u": 0, "x": 0, "f": 0, "index": 0}
    for k in await admin_conn.fetch(KEYS_SQL):
        table, name, kind = k["tbl"], k["name"], k["kind"]
        if kind == "f" and table not in distributed and k["parent"] in distributed:
            problems.append(f"{table}.{name}: a table that is not distributed references {k['parent']} "
                            "(a reference table cannot point into a shard)")
        if table not in distributed:
            continue
        column = distributed[table]
        checked[kind] += 1
        if kind in ("p", "u", "x") and column not in k["cols"]:
            problems.append(f"{table}.{name} ({k['def']}) does not include {column}")
        elif kind == "f" and k["parent"] not in REFERENCE_TABLES:
            pairs = dict(zip(k["cols"], k["parent_cols"], strict=True))
            parent_column = distributed.get(k["parent"])
            if parent_column is None:
                problems.append(f"{table}.{name} references {k['parent']}, neither distributed nor a reference table")
            elif pairs.get(column) != parent_column:
                problems.append(f"{table}.{name} ({k['def']}) does not pair {column} with "
                                f"{k['parent']}.{parent_column}: not colocated")
    global_unique = set()
    for ix in await admin_conn.fetch(UNIQUE_INDEXES_SQL):
        if ix["tbl"] not in distributed:
            continue
        checked["index"] += 1
        if distributed[ix["tbl"]] not in ix["cols"]:
            global_unique.add(ix["name"])
            if ix["name"] not in GLOBAL_UNIQUE_INDEXES:
                problems.append(f"{ix['tbl']}.{ix['name']} ({ix['def']}) does not include "
                                f"{distributed[ix['tbl']]} (allow-list in tests/ops/test_sharding.py)")
    assert not problems, "\n".join(problems)
    # Each kind was met (the queries are not vacuous), and the allow-list names only real
    # exceptions: an index that gained organization_id, or was dropped, leaves it.
    assert all(checked[kind] for kind in ("p", "u", "f", "index")), checked  # (no exclusion constraint yet)
    assert global_unique == set(GLOBAL_UNIQUE_INDEXES), global_unique ^ set(GLOBAL_UNIQUE_INDEXES)
    referenced = await admin_conn.fetch(
        "select distinct p.relname from pg_constraint k join pg_class p on p.oid = k.confrelid"
        " where k.contype = 'f' and k.conrelid = any($1::regclass[])", [f"public.{t}" for t in distributed])
    assert set(REFERENCE_TABLES) <= {r["relname"] for r in referenced}


def source_calls() -> set[str]:
    """Every auth.* / app.* SQL function the application's code names in a string (its
    statements, and names of functions it calls), docstrings and comments aside."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found |= set(CALL.findall(node.value)) | set(NAMED.findall(node.value))
    return found


def test_every_function_the_code_calls_is_classified():
    calls = source_calls()
    assert {"auth.begin_request", "auth.claim_due_schedules", "app.record_usage"} <= calls, calls
    assert calls == set(FUNCTIONS), (
        f"unclassified: {sorted(calls - set(FUNCTIONS))}; no longer called: {sorted(set(FUNCTIONS) - calls)} "
        "(FUNCTIONS in tests/ops/test_sharding.py, docs/sharding.md)")
    assert all(reason.startswith(("organization:", "spans:")) for reason in FUNCTIONS.values())


# --- 2. statements against hash-partitioned tables ----------------------------------------

PARTITIONS = 8
PARTITION_NAME = re.compile(r"^(?P<table>\w+)__p(?P<remainder>\d+)$")


@dataclass
class Recorded:
    """Statements the app sent, each with the first arguments it was sent with."""

    statements: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    calls: int = 0

    def add(self, sql: str, args: Any) -> None:
        self.calls += 1
        if sql not in self.statements:
            self.statements[sql] = tuple(args or ())


def record_statements(app: Any, recorded: Recorded) -> None:
    """Record every statement on the app's engine: the ORM's (SQLAlchemy's cursor event)
    and the read path's (raw asyncpg on the pool's connections: asyncpg's query logger)."""
    engine = app.state.engine.sync_engine

    @event.listens_for(engine, "before_cursor_execute")
    def orm_statement(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                      executemany: bool) -> None:
        recorded.add(statement, parameters[0] if executemany else parameters)

    @event.listens_for(engine, "connect")
    def raw_statements(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda q: recorded.add(q.query, q.args))


async def run_scenario(client: AsyncTestClient, admin: asyncpg.Connection) -> None:
    """What the API does for a tenant: sign up, a row in every tenant table through the
    API (the catalog suites' factories), every read (both credential kinds, a second page,
    each id filter), every write operation on its own rows, every delete; a
    project-restricted credential's reads."""
    tenant = await signup(client, f"shard{uuid.uuid4().hex[:6]}")
    await populate(client, admin, tenant)
    doc = openapi(client)
    refs = await tenant_refs(admin, tenant)
    restricted = await make_token(client, tenant, ["agents:read", "tasks:read"], project_ids=[tenant.project_id])
    statuses: dict[str, int] = {}
    ops = operations(doc)
    for method, template, op in ops:
        if method != "GET" or (method, template) in factories.STREAMS:
            continue
        path = await own_path(admin, tenant, template, op)
        query = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
        for headers in (tenant.token_auth, tenant.session_auth):
            r = await client.get(path, headers=headers, params={"limit": 1} if "limit" in query else {})
            statuses[f"GET {template}"] = r.status_code
            cursor = r.json().get("next_cursor") if r.status_code == 200 and isinstance(r.json(), dict) else None
            if cursor:
                await client.get(path, headers=headers, params={"limit": 1, "cursor": cursor})
        for name in sorted(query & set(factories.UUID_FIELDS)):
            if (table := factories.UUID_FIELDS[name]) in refs:
                await client.get(path, headers=tenant.token_auth, params={name: refs[table]})
    for path in ("/v1/agents", "/v1/tasks", f"/v1/agents/{refs['agent']}"):
        r = await client.get(path, headers=bearer(restricted["token"]))
        statuses[f"GET {path} (restricted)"] = r.status_code
    for method, template, op in ops:
        if method not in ("PATCH", "PUT") and not (method == "POST" and "{" in template):
            continue
        if (method, template) in factories.PUBLIC_OPERATIONS:
            continue
        schema = request_schema(doc, op)
        body = (gen_body(doc, schema, refs, uuid.uuid4().hex[:8], f"{method} {template}",
                         factories.BODY_OVERRIDES.get((method, template))) if schema else None)
        path = await own_path(admin, tenant, template, op, newest=True)
        r = await client.request(method, path, headers=tenant.token_auth, json=body)
        statuses[f"{method} {template}"] = r.status_code
    for method, template, op in reversed(ops):
        if method == "DELETE":
            path = await own_path(admin, tenant, template, op, newest=True)
            r = await client.delete(path, headers=tenant.token_auth)
            statuses[f"DELETE {template}"] = r.status_code
    await settle_usage(client)
    errors = {k: v for k, v in statuses.items() if v >= 500}
    assert not errors, errors
    ok = [k for k, v in statuses.items() if v < 300]
    assert len(ok) > len(statuses) // 2, statuses  # the scenario mostly works, so its statements are the usual ones


async def partition_tables(conn: asyncpg.Connection, distributed: dict[str, str]) -> None:
    """Turn the migrated tenant tables of this (empty) database into tables
    hash-partitioned by their distribution column, with the same columns, defaults,
    checks, keys, indexes and foreign keys, and the views over them put back. Policies
    and triggers go: the statements are EXPLAINed as a superuser, on their own filters."""
    regclasses = [f"public.{t}" for t in distributed]
    constraints = await conn.fetch(
        "select conrelid::regclass::text as tbl, conname, contype::text, pg_get_constraintdef(oid) as def"
        " from pg_constraint where contype in ('p', 'u', 'x', 'f')"
        " and (conrelid = any($1::regclass[]) or confrelid = any($1::regclass[]))"
        " order by contype = 'f', conrelid::regclass::text, conname", regclasses)
    indexes = await conn.fetch(
        "select i.relname, pg_get_indexdef(x.indexrelid) as def from pg_index x join pg_class i on i.oid = x.indexrelid"
        " where x.indrelid = any($1::regclass[])"
        " and not exists (select from pg_constraint k where k.conindid = x.indexrelid and k.contype in ('p', 'u', 'x'))",
        regclasses)
    views = await conn.fetch(
        "select c.oid::regclass::text as name, pg_get_viewdef(c.oid) as def, c.reloptions from pg_class c"
        " where c.relkind = 'v' and c.relnamespace in ('public'::regnamespace, 'app'::regnamespace,"
        " 'auth'::regnamespace) order by c.oid")
    async with conn.transaction():
        for table, column in distributed.items():
            await conn.execute(f"alter table public.{q(table)} rename to {q(table + '__plain')}")
            await conn.execute(
                f"create table public.{q(table)} (like public.{q(table + '__plain')} including defaults"
                f" including generated including identity including constraints) partition by hash ({q(column)})")
            for r in range(PARTITIONS):
                await conn.execute(f"create table public.{q(f'{table}__p{r}')} partition of public.{q(table)}"
                                   f" for values with (modulus {PARTITIONS}, remainder {r})")
        await conn.execute("drop table " + ", ".join(f"public.{q(t + '__plain')}" for t in distributed) + " cascade")
        for c in constraints:
            if c["conname"] in GLOBAL_UNIQUE_INDEXES:
                continue  # a plain index below (see GLOBAL_UNIQUE_INDEXES)
            await conn.execute(f"alter table {c['tbl']} add constraint {q(c['conname'])} {c['def']}")
        for ix in indexes:
            definition = ix["def"]
            if ix["relname"] in GLOBAL_UNIQUE_INDEXES:
                definition = definition.replace("CREATE UNIQUE INDEX", "CREATE INDEX", 1)
            await conn.execute(definition)
        pending = [v for v in views if not await conn.fetchval("select to_regclass($1) is not null", v["name"])]
        for v in pending:  # created in creation order: a view over a view comes after it
            options = f" with ({', '.join(v['reloptions'])})" if v["reloptions"] else ""
            await conn.execute(f"create view {v['name']}{options} as {v['def']}")
            await conn.execute(f"alter view {v['name']} owner to tenant_owner")


@pytest.fixture(scope="module")
async def sharded(admin_url: str, database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A database of its own, migrated like the test database, its tenant tables then
    hash-partitioned: a superuser connection to it."""
    name = f"{database.name}_sharded"
    await bootstrap(admin_url, database=name, owner_password="owner-pw", api_password="api-pw")
    owner_url = urlunsplit(urlsplit(database.owner_url)._replace(path="/" + name))
    await asyncio.to_thread(migrate.upgrade, asyncpg_url(owner_url))
    conn = await connect(urlunsplit(urlsplit(admin_url)._replace(path="/" + name)))
    try:
        await partition_tables(conn, distribution_columns(await tenant_tables(conn)))
        yield conn
    finally:
        await conn.close()
        server = await connect(admin_url)
        try:
            await server.execute(f"drop database if exists {q(name)} with (force)")
        finally:
            await server.close()


@pytest.fixture(scope="module")
async def recorded(settings: Settings, module_admin: asyncpg.Connection) -> Recorded:
    result = Recorded()
    app = create_app(settings)
    record_statements(app, result)
    async with AsyncTestClient(app) as client:
        await run_scenario(client, module_admin)
    return result


PLANNED = re.compile(r"^\s*(\(\s*)*(select|insert|update|delete|with)\b", re.IGNORECASE)


@dataclass
class Scan:
    table: str
    remainder: int
    alias: str
    conditions: str  # its index condition, filter, ... (EXPLAIN VERBOSE: qualified by aliases)
    subplan: int  # the SubPlan/InitPlan it is in (0: the statement's own level)


@dataclass
class Touched:
    """What one plan touches: the partition scans and modified partitions, INSERT targets
    with their output columns, Appends over partitions that pruned at executor start."""

    scans: list[Scan] = field(default_factory=list)
    modified: dict[str, set[int]] = field(default_factory=dict)
    inserts: dict[str, list[str]] = field(default_factory=dict)
    runtime_pruned: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)

    def partitions(self, distributed: dict[str, str]) -> dict[str, set[int]]:
        """Distributed table -> the partitions the statement can touch. A correlated
        subquery's scans of every partition count as the partition of the outer row
        they are joined to on the distribution column (pruned per outer row at execution;
        a distributed planner routes a subquery joined on the distribution column with
        its outer, colocated query)."""
        out: dict[str, set[int]] = {t: set(r) for t, r in self.modified.items()}
        # An outer row is named by its scan's alias, or (above an Append of partitions
        # "agent_1", "agent_2", ...) by the partitioned table's alias "agent".
        outer = {name: s for s in self.scans if s.subplan == 0 for name in (s.alias, re.sub(r"_\d+$", "", s.alias))}
        by_table: dict[tuple[int, str], list[Scan]] = {}
        for s in self.scans:
            by_table.setdefault((s.subplan, s.table), []).append(s)
        for (subplan, table), scans in by_table.items():
            remainders = {s.remainder for s in scans}
            if subplan and len(remainders) > 1:
                joined = {outer[m[1]].remainder for s in scans
                          if (m := colocated_join(s, distributed, outer)) is not None}
                if len(joined) == 1 and all(colocated_join(s, distributed, outer) for s in scans):
                    remainders = joined
            out.setdefault(table, set()).update(remainders)
        return out


def colocated_join(scan: Scan, distributed: dict[str, str], outer: dict[str, Scan]) -> tuple[str, str] | None:
    """(scan alias, outer alias) when the scan's conditions equate its distribution column
    with an outer scan's distribution column."""
    column = distributed[scan.table]
    for m in re.finditer(rf"\b{re.escape(scan.alias)}\.{column} = (\w+)\.(\w+)\b", scan.conditions):
        other = outer.get(m[1])
        if other is not None and distributed.get(other.table) == m[2]:
            return scan.alias, m[1]
    return None


CONDITIONS = ("Index Cond", "Recheck Cond", "Filter", "Join Filter", "Hash Cond", "Merge Cond")


def walk(node: dict[str, Any], touched: Touched, subplan: int = 0) -> None:
    if node.get("Parent Relationship") in ("SubPlan", "InitPlan"):
        subplan = id(node)
    if m := PARTITION_NAME.match(node.get("Relation Name", "")):
        touched.scans.append(Scan(m["table"], int(m["remainder"]), node.get("Alias", ""),
                                  " ".join(str(node.get(c, "")) for c in CONDITIONS), subplan))
    for target in node.get("Target Tables", []):
        if m := PARTITION_NAME.match(target["Relation Name"]):
            touched.modified.setdefault(m["table"], set()).add(int(m["remainder"]))
    if node.get("Node Type") == "ModifyTable" and node.get("Operation") == "Insert":
        # The rows come from the outer child; InitPlans (an INSERT ... SELECT ... WHERE
        # EXISTS checking parents) hang off the same node and come first.
        source = next((p for p in node.get("Plans", []) if p.get("Parent Relationship") == "Outer"), {})
        touched.inserts[node["Relation Name"]] = source.get("Output", [])
    if node.get("Node Type") in ("Append", "MergeAppend") and (removed := node.get("Subplans Removed")):
        children = [PARTITION_NAME.match(p.get("Relation Name", "")) for p in node.get("Plans", [])]
        label = next((m["table"] for m in children if m), "?")
        touched.runtime_pruned.append(f"{label}: {removed} removed at executor start")
        if not node.get("Plans"):
            touched.emptied.append(f"an Append pruned to nothing ({removed} partitions removed)")
    for child in node.get("Plans", []):
        walk(child, touched, subplan)


async def literal(conn: asyncpg.Connection, type_name: str, value: Any) -> str:
    """``value`` as a SQL literal of the type, encoded as the app's driver sent it."""
    return await conn.fetchval(f"select quote_nullable($1::{type_name})", value)


async def explain(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> dict[str, Touched]:
    """The statement's custom and generic plans (PREPARE with the types the server infers,
    EXPLAIN EXECUTE with the values sent)."""
    prepared = await conn.prepare(sql)
    types = [await conn.fetchval("select format_type($1, null)", t.oid) for t in prepared.get_parameters()]
    values = [await literal(conn, t, v) for t, v in zip(types, args, strict=True)]
    name = f"s_{uuid.uuid4().hex[:12]}"
    signature = f" ({', '.join(types)})" if types else ""
    await conn.execute(f"prepare {name}{signature} as {sql}")
    out = {}
    try:
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"set plan_cache_mode = {mode}")
            execute = f"execute {name}({', '.join(values)})" if values else f"execute {name}"
            plan = json.loads(await conn.fetchval(f"explain (format json, verbose) {execute}"))[0]["Plan"]
            touched = Touched()
            walk(plan, touched)
            out[mode] = touched
    finally:
        await conn.execute(f"deallocate {name}")
        await conn.execute("reset plan_cache_mode")
    return out


def shorten(sql: str, limit: int = 300) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit // 2] + " ... " + flat[-limit // 2:]


def organization_value(expression: str, sql: str) -> bool:
    """An INSERT's organization_id is a value the statement carries: a parameter, a
    literal, a column of a (single-partition) row it reads, or such a value in each row
    of its VALUES list."""
    e = expression.strip("() ")
    if m := re.fullmatch(r'"\*VALUES\*"\.column(\d+)', e):
        rows = values_rows(sql)
        return bool(rows) and all(organization_value(row[int(m[1]) - 1], sql) for row in rows)
    return bool(re.fullmatch(r"\$\d+(::\w+)?|'[0-9a-f-]{36}'::uuid|[\w.\"]+\.(organization_id|id)", e))


def top_level(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
        elif not quoted and depth == 0 and ch == separator:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def values_rows(sql: str) -> list[list[str]]:
    """The expressions of each row of an INSERT's VALUES list."""
    m = re.search(r"\bVALUES\s*(\(.*?\))\s*(ON CONFLICT\b|RETURNING\b|$)", " ".join(sql.split()), re.IGNORECASE)
    if m is None:
        return []
    return [top_level(row.strip()[1:-1], ",") for row in top_level(m[1], ",")]


@dataclass(frozen=True)
class Layout:
    """The partitioned database: distributed table -> its distribution column, and that
    column's 0-based position among the table's columns (an INSERT plan's output lists
    every column in order)."""

    columns: dict[str, str]
    positions: dict[str, int]


@pytest.fixture(scope="module")
async def layout(sharded: asyncpg.Connection) -> Layout:
    rows = await sharded.fetch(
        "select c.relname, a.attname, (select count(*) from pg_attribute b where b.attrelid = c.oid"
        " and b.attnum > 0 and not b.attisdropped and b.attnum < a.attnum) as position"
        " from pg_class c join pg_partitioned_table p on p.partrelid = c.oid"
        " join pg_attribute a on a.attrelid = c.oid and a.attnum = p.partattrs[0]")
    return Layout({r["relname"]: r["attname"] for r in rows}, {r["relname"]: r["position"] for r in rows})


def problems_of(sql: str, plans: dict[str, Touched], layout: Layout) -> list[str]:
    """Why a statement would not run on one shard, per plan (none: it would)."""
    problems = []
    for mode, t in plans.items():
        where = f"[{mode.removeprefix('force_')}] {shorten(sql)}"
        partitions = t.partitions(layout.columns)
        for table, remainders in partitions.items():
            if len(remainders) != 1:
                problems.append(f"{where}: {len(remainders)} partitions of {table}")
        if all(len(r) == 1 for r in partitions.values()) and len(set().union(*partitions.values())) > 1:
            problems.append(f"{where}: partitions of different organizations {partitions} (not colocated)")
        if mode == "force_custom_plan" and t.runtime_pruned:
            problems.append(f"{where}: pruned only at execution ({t.runtime_pruned}): the organization is not a "
                            "value of the statement")
        problems.extend(f"{where}: {e}" for e in t.emptied)
        for table, output in t.inserts.items():
            position = layout.positions.get(table)
            if position is not None and not (position < len(output) and organization_value(output[position], sql)):
                problems.append(f"{where}: INSERT into {table} does not give the organization as a value "
                                f"({output[position] if position < len(output) else output})")
    return problems


async def test_every_statement_touches_one_partition(recorded, sharded, layout):
    assert {"agent", "organization", "token_audit_log"} <= set(layout.columns)
    problems: list[str] = []
    planned = tenant_statements = 0
    calls: set[str] = set()
    for sql, args in recorded.statements.items():
        calls |= set(CALL.findall(sql))
        if not PLANNED.match(sql):
            continue
        planned += 1
        try:
            plans = await explain(sharded, sql, args)
        except asyncpg.PostgresError as exc:
            problems.append(f"cannot EXPLAIN ({exc.__class__.__name__}: {exc}): {shorten(sql)}")
            continue
        if any(t.scans or t.modified or t.inserts or t.emptied for t in plans.values()):
            tenant_statements += 1
            problems.extend(problems_of(sql, plans, layout))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
    # The scenario really exercised the API: many statements on tenant tables, the
    # request path's definer function among the calls, every call classified.
    assert tenant_statements >= 100, (tenant_statements, planned, len(recorded.statements), recorded.calls)
    assert "auth.begin_request" in calls
    assert calls <= set(FUNCTIONS), sorted(calls - set(FUNCTIONS))


async def test_the_checks_fail_statements_a_shard_could_not_route(sharded, layout):
    """Each check above can fail: a statement with no organization filter touches every
    partition, one filtered by the request context is pruned only at execution, a
    subquery not joined on organization_id is not colocated, and an INSERT taking
    organization_id from a default or the context does not name it."""
    org = uuid.uuid4()

    async def problems(sql: str, *args: Any) -> list[str]:
        return problems_of(sql, await explain(sharded, sql, args), layout)

    assert await problems("select id from agent where organization_id = $1 and name = $2", org, "x") == []
    assert await problems("insert into workspace (organization_id, name) values ($1, $2), ($1, $3)", org, "a", "b") == []
    assert await problems(
        "select p.id, (select count(*) from agent a where a.organization_id = p.organization_id"
        " and a.project_id = p.id) from project p where p.organization_id = $1", org) == []
    assert "8 partitions of agent" in " ".join(await problems("select id from agent where name = $1", "x"))
    assert "pruned only at execution" in " ".join(
        await problems("select id from agent where organization_id = app.current_organization_id()"))
    assert "8 partitions of agent" in " ".join(await problems(
        "select p.id, (select count(*) from agent a where a.project_id = p.id) from project p"
        " where p.organization_id = $1", org))
    assert "does not give the organization" in " ".join(
        await problems("insert into workspace (organization_id, name) values (app.current_organization_id(), $1)",
                       "w"))
    assert "does not give the organization" in " ".join(await problems(
        "insert into workspace (organization_id, name) values ($1, $2), (app.current_organization_id(), $3)",
        org, "a", "b"))
