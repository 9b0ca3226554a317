"""The schema's security properties, read from pg_catalog (never from hand-kept lists):
a new table is checked the moment a migration creates it."""

from __future__ import annotations

import re

import asyncpg
import pytest

from tenant_api import scopes as scope_catalog
from tests.support.security import tenant_tables

API = "tenant_api"
RESTRICTED = "tenant_api_projects"  # what a project-restricted request runs as

# Indexes on tenant tables that may not lead with organization_id. Each one serves a
# lookup that happens before any organization is known; nothing else belongs here.
INDEX_ALLOW_LIST = {
    # auth.begin_request finds an API token by the SHA-256 of its secret (global, unique).
    "platform_token_hash_key",
    # login (auth.create_session) finds a user's organizations from the user alone.
    "organization_membership_user_idx",
    # auth.accept_invite finds an invite by the SHA-256 of either secret (global, unique).
    "project_invite_token_hash_key",
    "project_invite_mail_token_hash_key",
    # begin_request / login find a project-only member's projects from the user alone.
    "project_membership_user_idx",
    # the mailer claims due mail across organizations (a global queue by nature).
    "invite_outbox_due_idx",
    # the scheduler claims due schedules across organizations (FOR UPDATE SKIP LOCKED).
    "job_schedule_due_idx",
    # the lease reaper finds runs whose lease expired across organizations (a global queue).
    "job_lease_idx", "computer_use_task_lease_idx", "robot_macro_execution_lease_idx",
    # the webhook worker claims due deliveries across organizations (a global queue).
    "webhook_delivery_due_idx",
    # expired idempotency keys are purged across organizations.
    "idempotency_key_expiry_idx",
}

# Audit tables do not audit themselves: the log, the usage records (one per request) and
# the seals over the log are written only by the audit machinery, never by the API role.
AUDIT_TABLES = {"token_audit_log", "token_usage", "audit_seal"}
# Bookkeeping whose every row restates what the trail already holds, at a volume that
# would drown it: the webhook outbox (each event copies a change audited on its own
# table; deliveries and attempts are the worker's log, and a redelivery is a request,
# kept as its usage record) and idempotency keys (each restates a request kept as its
# usage record and as the change it made). The API role cannot write events or attempts.
BOOKKEEPING = {"webhook_event", "webhook_delivery", "webhook_attempt", "idempotency_key"}
NOT_AUDITED = AUDIT_TABLES | BOOKKEEPING

# The definer functions the API role may call in schema auth (the credential and request
# doors). Every door around RLS the API role may open. Adding one is a security decision:
# list it here with the reason. The background duties' doors belong to roles of their
# own (tenant_api.background.DUTIES), the login doors to the login role (LOGIN_FUNCTIONS).
AUTH_API_FUNCTIONS = {
    "begin_request",  # a request's credential, before any context
    "accept_invite",  # the invitee acts in the inviting organization, whose context they don't have
    "enabled_schedule_count",  # the schedule quota: a number, of the request's own organization
    "rate_limit_of",  # the limiter reads one organization's quota (two numbers)
    # policies/verification.sql: the request's own user only (issue_verification,
    # my_organizations), an admin's new service account identity (create_service_user)
    "issue_verification", "my_organizations", "create_service_user",
}
# The login role's own (tenant_login, on top of the API role's): a password hash for an
# email, a session for a user id, a new user, a mailbox proven by a secret.
LOGIN_FUNCTIONS = {"login_lookup", "create_session", "signup", "verify_email", "invite_preview"}
LOGIN = "tenant_login"
BACKGROUND_LOGINS = ("tenant_worker", "tenant_api_jobs")

# Tables without organization_id that still must have RLS enabled and forced.
GLOBAL_RLS_TABLES = {"organization", "user_account"}

# pg_trigger.tgtype bits
TRIGGER_ROW, TRIGGER_BEFORE, TRIGGER_INSERT, TRIGGER_DELETE, TRIGGER_UPDATE = 1, 2, 4, 8, 16


@pytest.fixture
async def tables(admin_conn: asyncpg.Connection) -> list[str]:
    found = await tenant_tables(admin_conn)
    # The catalog query must find the core tables; a query silently returning nothing
    # would make every test below pass vacuously.
    assert {"workspace", "project", "agent", "platform_token", "token_audit_log"} <= set(found), found
    return found


async def test_rls_enabled_and_forced(admin_conn, tables):
    rows = await admin_conn.fetch(
        "select c.relname, c.relrowsecurity, c.relforcerowsecurity from pg_class c"
        " where c.relnamespace = 'public'::regnamespace and c.relname = any($1::text[])",
        [*tables, *GLOBAL_RLS_TABLES])
    assert {r["relname"] for r in rows} == set(tables) | GLOBAL_RLS_TABLES
    bad = [r["relname"] for r in rows if not (r["relrowsecurity"] and r["relforcerowsecurity"])]
    assert not bad, f"RLS not enabled AND forced on: {bad}"


async def test_every_tenant_table_has_policies(admin_conn, tables):
    counts = dict(await admin_conn.fetch(
        "select tablename, count(*) from pg_policies where schemaname = 'public' group by tablename"))
    bad = [t for t in [*tables, *GLOBAL_RLS_TABLES] if not counts.get(t)]
    assert not bad, f"tables without any policy: {bad}"


async def test_api_policies_reference_the_request_context(admin_conn, tables):
    """A permissive policy that lets tenant_api (or its restricted twin, or PUBLIC) in must
    compare rows with the request context: a `using (true)` policy for the API role would
    open the table. The context is read through the accessors or, in the generated
    policies, straight from the protected parameter (policies/context.sql)."""
    rows = await admin_conn.fetch(
        "select tablename, policyname, roles::text[] as roles, permissive, coalesce(qual, '') as qual,"
        " coalesce(with_check, '') as with_check from pg_policies"
        " where schemaname = 'public' and tablename = any($1::text[])",
        [*tables, *GLOBAL_RLS_TABLES])
    bad = []
    for r in rows:
        if not ({API, RESTRICTED, "public"} & set(r["roles"])) or r["permissive"] != "PERMISSIVE":
            continue
        for clause in (r["qual"], r["with_check"]):
            if clause and clause != "false" and not re.search(r"current_(organization|token|user)_id\(\)|"
                                        r"current_setting\('backtrace_functions'::text\)", clause):
                bad.append(f"{r['tablename']}.{r['policyname']}: {clause}")
    assert not bad, f"policies for {API} not tied to the request context: {bad}"
    public = [f"{r['tablename']}.{r['policyname']}" for r in rows if "public" in r["roles"]]
    assert not public, f"policies applying to PUBLIC (every role): {public}"


async def test_audit_trigger(admin_conn, tables):
    rows = await admin_conn.fetch(
        "select c.relname, t.tgname, t.tgtype, t.tgenabled::text as tgenabled, t.tgfoid::regprocedure::text as fn,"
        " encode(t.tgargs, 'escape') as args"
        " from pg_trigger t join pg_class c on c.oid = t.tgrelid"
        " where not t.tgisinternal and c.relnamespace = 'public'::regnamespace and t.tgname = 'audit'")
    audit = {r["relname"]: r for r in rows}
    problems = []
    for table in tables:
        if table in NOT_AUDITED:
            if table in audit:
                problems.append(f"{table} must not have the audit trigger")
            continue
        r = audit.get(table)
        if r is None:
            problems.append(f"{table} has no audit trigger")
            continue
        tgtype = r["tgtype"]
        if r["fn"] != "app.audit_row()":
            problems.append(f"{table}.audit runs {r['fn']}")
        if not tgtype & TRIGGER_ROW or tgtype & TRIGGER_BEFORE:
            problems.append(f"{table}.audit is not AFTER ... FOR EACH ROW")
        if not (tgtype & TRIGGER_INSERT and tgtype & TRIGGER_UPDATE and tgtype & TRIGGER_DELETE):
            problems.append(f"{table}.audit does not fire on INSERT, UPDATE and DELETE")
        if r["tgenabled"] not in ("O", "A"):
            problems.append(f"{table}.audit is disabled ({r['tgenabled']})")
        args = r["args"].split("\\000")
        if len(args) < 3 or args[2] != "organization_id":
            problems.append(f"{table}.audit arguments {args}: the organization column must be organization_id")
    assert NOT_AUDITED <= set(tables), "token_audit_log vanished from the catalog"
    assert not problems, problems


async def test_primary_key_leads_with_organization_id(admin_conn, tables):
    rows = await admin_conn.fetch(
        "select c.relname, (select a.attname from pg_attribute a"
        "                    where a.attrelid = k.conrelid and a.attnum = k.conkey[1]) as first"
        " from pg_class c left join pg_constraint k on k.conrelid = c.oid and k.contype = 'p'"
        " where c.relnamespace = 'public'::regnamespace and c.relname = any($1::text[])", tables)
    bad = [f"{r['relname']} ({r['first'] or 'no primary key'})" for r in rows if r["first"] != "organization_id"]
    assert len(rows) == len(tables)
    assert not bad, f"primary key not led by organization_id: {bad}"


async def test_indexes_lead_with_organization_id(admin_conn, tables):
    rows = await admin_conn.fetch(
        "select c.relname as tbl, i.relname as idx,"
        " (select a.attname from pg_attribute a where a.attrelid = x.indrelid and a.attnum = x.indkey[0]) as first"
        " from pg_index x join pg_class c on c.oid = x.indrelid join pg_class i on i.oid = x.indexrelid"
        " where c.relnamespace = 'public'::regnamespace and c.relname = any($1::text[])", tables)
    assert rows
    bad = [f"{r['tbl']}.{r['idx']} (leads with {r['first'] or 'an expression'})"
           for r in rows if r["first"] != "organization_id" and r["idx"] not in INDEX_ALLOW_LIST]
    assert not bad, f"indexes not led by organization_id (allow-list in tests/security/test_catalog.py): {bad}"
    # The allow-list names real indexes: a renamed or dropped one must be removed from it.
    assert INDEX_ALLOW_LIST <= {r["idx"] for r in rows}, INDEX_ALLOW_LIST - {r["idx"] for r in rows}


@pytest.mark.parametrize("role", [API, RESTRICTED])
async def test_api_role_attributes(admin_conn, role):
    row = await admin_conn.fetchrow(
        "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolinherit"
        " from pg_roles where rolname = $1", role)
    assert row is not None
    assert dict(row) == {"rolsuper": False, "rolbypassrls": False, "rolcreaterole": False,
                         "rolcreatedb": False, "rolreplication": False, "rolinherit": False}
    # A member of another role could SET ROLE to it (e.g. the owner). The API role may
    # switch to its restricted twin, and to nothing else; the twin to nothing.
    memberships = await admin_conn.fetch(
        "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid"
        " where m.member = (select oid from pg_roles where rolname = $1)", role)
    assert [r["rolname"] for r in memberships] == ([RESTRICTED] if role == API else [])
    assert not await admin_conn.fetchval("select rolcanlogin from pg_roles where rolname = $1", RESTRICTED)


async def test_restricted_twin_holds_exactly_the_api_roles_privileges(admin_conn):
    """policies/restricted_credentials.sql copies the API role's grants and hand-written
    policies to tenant_api_projects: the same, never more (a privilege granted to the twin
    alone would be one more thing the API role may do, by switching)."""
    privileges = """
        select c.oid::regclass::text || coalesce('.' || at.attname, '') as object, a.privilege_type
          from pg_class c
          left join pg_attribute at on at.attrelid = c.oid and at.attnum > 0 and not at.attisdropped
          cross join lateral aclexplode(coalesce(at.attacl, c.relacl)) a
         where c.relnamespace in ('public'::regnamespace, 'app'::regnamespace, 'auth'::regnamespace)
           and a.grantee = $1::regrole
        union
        select p.oid::regprocedure::text, 'EXECUTE' from pg_proc p
         where p.pronamespace in ('public'::regnamespace, 'app'::regnamespace, 'auth'::regnamespace)
           and has_function_privilege($1, p.oid, 'EXECUTE')
        union
        select n.nspname, 'USAGE' from pg_namespace n where has_schema_privilege($1, n.oid, 'USAGE')
    """
    api = {(r["object"], r["privilege_type"]) for r in await admin_conn.fetch(privileges, API)}
    twin = {(r["object"], r["privilege_type"]) for r in await admin_conn.fetch(privileges, RESTRICTED)}
    assert api and api == twin, (api - twin, twin - api)
    generated = {"tenant_select", "tenant_insert", "tenant_update", "tenant_delete"}
    policies = await admin_conn.fetch(
        "select polrelid::regclass::text as tbl, polname, polroles::regrole[]::text[] as roles from pg_policy")
    bad = [f"{r['tbl']}.{r['polname']} {r['roles']}" for r in policies
           if API in r["roles"] and r["polname"] not in generated and RESTRICTED not in r["roles"]]
    assert not bad, f"hand-written API policies the restricted twin lacks: {bad}"
    # generated policies: four per role, each role's reading its own fields of the context
    for r in policies:
        if r["polname"] in generated:
            assert r["roles"] == [API], r
        if r["polname"].removesuffix("_restricted") in generated and r["polname"].endswith("_restricted"):
            assert r["roles"] == [RESTRICTED], r


async def test_api_role_owns_nothing(admin_conn):
    owned = await admin_conn.fetch(_OWNED, API)
    assert owned == [], [r["what"] for r in owned]
    creatable = await admin_conn.fetch(
        "select nspname from pg_namespace where has_schema_privilege($1, oid, 'CREATE')", API)
    assert creatable == [], [r["nspname"] for r in creatable]


async def test_api_role_cannot_write_the_audit_log(admin_conn):
    for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
        assert not await admin_conn.fetchval(
            "select has_table_privilege($1, 'public.token_audit_log', $2)", API, privilege), privilege
    for privilege in ("INSERT", "UPDATE"):
        assert not await admin_conn.fetchval(
            "select has_any_column_privilege($1, 'public.token_audit_log', $2)", API, privilege), privilege
    assert await admin_conn.fetchval("select has_table_privilege($1, 'public.token_audit_log', 'SELECT')", API)


@pytest.mark.parametrize("table,column", [("user_account", "password_hash"), ("platform_token", "token_hash")])
async def test_api_role_cannot_read_secret_columns(admin_conn, api_conn, table, column):
    assert not await admin_conn.fetchval("select has_column_privilege($1, $2, $3, 'SELECT')",
                                         API, f"public.{table}", column)
    # ... and the table's other columns stay readable (the check above is not vacuous).
    assert await admin_conn.fetchval("select has_column_privilege($1, $2, 'id', 'SELECT')", API, f"public.{table}")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch(f"select {column} from public.{table}")


_DEFINERS = """
    select n.nspname || '.' || p.proname as name, has_function_privilege($1, p.oid, 'EXECUTE') as x
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where p.prosecdef and n.nspname in ('app', 'auth')
"""

_OWNED = """
    select 'relation ' || oid::regclass::text as what from pg_class where relowner = to_regrole($1)
    union all select 'function ' || oid::regprocedure::text from pg_proc where proowner = to_regrole($1)
    union all select 'schema ' || nspname from pg_namespace where nspowner = to_regrole($1)
    union all select 'type ' || oid::regtype::text from pg_type where typowner = to_regrole($1)
    union all select 'database ' || datname from pg_database where datdba = to_regrole($1)
"""


async def _executable_definers(conn: asyncpg.Connection, role: str) -> set[str]:
    return {r["name"] for r in await conn.fetch(_DEFINERS, role) if r["x"]}


async def _memberships(conn: asyncpg.Connection, role: str) -> set[str]:
    return {r["rolname"] for r in await conn.fetch(
        "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid"
        " where m.member = to_regrole($1)", role)}


async def test_api_role_executes_only_the_auth_entry_points(admin_conn):
    rows = await admin_conn.fetch(
        "select p.proname, p.oid::regprocedure::text as sig, has_function_privilege($1, p.oid, 'EXECUTE') as x"
        " from pg_proc p where p.pronamespace = 'auth'::regnamespace", API)
    executable = {r["proname"] for r in rows if r["x"]}
    assert executable == AUTH_API_FUNCTIONS, sorted(r["sig"] for r in rows if r["x"])
    assert {r["proname"] for r in rows} > AUTH_API_FUNCTIONS  # role_scopes etc. exist but are not callable


async def test_api_role_opens_no_background_or_login_door(admin_conn):
    """Every background duty's and the login role's definer functions: none is the API
    role's (nor its restricted twin's, which holds the same)."""
    from tenant_api.background import DUTIES

    doors = {f for duty in DUTIES.values() for f in duty.functions} | {f"auth.{f}" for f in LOGIN_FUNCTIONS}
    for role in (API, RESTRICTED):
        executable = await _executable_definers(admin_conn, role)
        assert doors <= {r["name"] for r in await admin_conn.fetch(_DEFINERS, role)}  # they exist
        assert not executable & doors, sorted(executable & doors)


async def test_background_duty_roles_hold_their_functions_alone(admin_conn):
    """tenant_api.background.DUTIES: each duty's NOLOGIN role may execute exactly its own
    definer functions, owns nothing, bypasses nothing, switches to nothing; no other
    duty's role (nor the API role) may execute them."""
    from tenant_api.background import DUTIES

    everything: dict[str, str] = {}
    for name, duty in DUTIES.items():
        attrs = await admin_conn.fetchrow(
            "select rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolinherit"
            " from pg_roles where rolname = $1", duty.role)
        assert attrs is not None, duty.role
        assert not any(dict(attrs).values()), (name, dict(attrs))
        assert await admin_conn.fetch(_OWNED, duty.role) == [], duty.role
        assert await _memberships(admin_conn, duty.role) == set(), duty.role
        assert await _executable_definers(admin_conn, duty.role) == set(duty.functions), name
        for function in duty.functions:
            assert function not in everything, f"{function}: {everything.get(function)} and {duty.role}"
            everything[function] = duty.role


@pytest.mark.parametrize("login", BACKGROUND_LOGINS)
async def test_background_logins_hold_their_process_duties_and_nothing_of_the_api(admin_conn, login):
    """tenant_worker (the scheduler process) and tenant_api_jobs (the API process's
    background threads): logins holding their process's duties, nothing more: no
    request door, no table of their own, no BYPASSRLS."""
    from tenant_api.background import DUTIES

    duties = [d for d in DUTIES.values() if d.login == login]
    assert duties
    attrs = await admin_conn.fetchrow(
        "select rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles where rolname = $1",
        login)
    assert dict(attrs) == {"rolcanlogin": True, "rolsuper": False, "rolbypassrls": False, "rolcreaterole": False,
                           "rolcreatedb": False}
    assert await admin_conn.fetch(_OWNED, login) == []
    assert await _memberships(admin_conn, login) == {d.role for d in duties}
    assert await _executable_definers(admin_conn, login) == {f for d in duties for f in d.functions}
    # No table privilege beyond what its duties need (the webhook worker reads an event
    # as the owning credential, under the API role's own read policy).
    tables = {r["t"] for r in await admin_conn.fetch(
        "select c.oid::regclass::text as t from pg_class c"
        " where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'p')"
        " and (has_table_privilege($1, c.oid, 'SELECT') or has_table_privilege($1, c.oid, 'INSERT')"
        "      or has_table_privilege($1, c.oid, 'UPDATE') or has_table_privilege($1, c.oid, 'DELETE'))", login)}
    assert tables == ({"webhook_event"} if login == "tenant_worker" else set()), tables


async def test_login_role_is_the_api_role_plus_the_login_functions(admin_conn):
    attrs = await admin_conn.fetchrow(
        "select rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles where rolname = $1",
        LOGIN)
    assert dict(attrs) == {"rolcanlogin": True, "rolsuper": False, "rolbypassrls": False, "rolcreaterole": False,
                           "rolcreatedb": False}
    assert await admin_conn.fetch(_OWNED, LOGIN) == []
    assert await _memberships(admin_conn, LOGIN) == {API}
    auth_functions = {f.removeprefix("auth.") for f in await _executable_definers(admin_conn, LOGIN)
                      if f.startswith("auth.")}
    assert auth_functions == AUTH_API_FUNCTIONS | LOGIN_FUNCTIONS, auth_functions


async def test_security_definer_functions_have_a_fixed_search_path(admin_conn):
    rows = await admin_conn.fetch(
        "select p.oid::regprocedure::text as sig, p.proconfig, pg_get_userbyid(p.proowner) as owner"
        " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where p.prosecdef and n.nspname in ('app', 'auth')")
    assert {r["sig"] for r in rows} >= {"auth.begin_request(bytea,uuid,uuid,text)", "app.audit_row()"}
    bad = []
    for r in rows:
        paths = [c.split("=", 1)[1] for c in r["proconfig"] or [] if c.startswith("search_path=")]
        if not paths:
            bad.append(f"{r['sig']}: no search_path")
            continue
        for schema in (s.strip().strip('"') for s in paths[0].split(",")):
            if schema in ("pg_catalog", "pg_temp"):
                continue
            # Any other schema on the path must not be writable by the API role.
            if schema == "$user" or await admin_conn.fetchval(
                    "select coalesce(has_schema_privilege($1, to_regnamespace($2), 'CREATE'), true)", API, schema):
                bad.append(f"{r['sig']}: search_path has {schema}")
        if r["owner"] == API:
            bad.append(f"{r['sig']}: owned by {API}")
    assert not bad, bad


async def test_role_scopes_in_sql_equal_python(admin_conn):
    for role, scopes in scope_catalog.ROLE_SCOPES.items():
        in_sql = await admin_conn.fetchval("select auth.role_scopes($1)", role)
        assert scope_catalog.expand(in_sql) == scope_catalog.expand(scopes), role
        # and the database's own expansion (the mask begin_request uses) agrees with Python's
        mask = await admin_conn.fetchval("select auth.role_mask($1)", role)
        assert scope_catalog.scopes_of_mask(mask) == scope_catalog.expand(scopes), role
        assert set(in_sql) <= scope_catalog.SCOPES, role
    assert await admin_conn.fetchval("select auth.role_scopes('nobody')") == []


async def test_membership_roles_equal_python_roles(admin_conn):
    """The roles the database accepts are exactly the roles with a scope set."""
    definitions = await admin_conn.fetch(
        "select pg_get_constraintdef(oid) as def from pg_constraint"
        " where conrelid = 'public.organization_membership'::regclass and contype = 'c'")
    role_checks = [d["def"] for d in definitions if "role" in d["def"]]
    assert len(role_checks) == 1, role_checks
    assert set(re.findall(r"'(\w+)'::text", role_checks[0])) == set(scope_catalog.ROLES)


async def test_every_status_lifecycle_is_enforced_by_the_database(admin_conn):
    """Each table with a Python lifecycle has a guard_status trigger with exactly the same
    entity, initial state and moves, and no guarded table lacks a Python lifecycle: the
    API's 409 and the database's refusal can never disagree."""
    import tenant_api.app  # noqa: F401  (imports every resource module, registering its lifecycle)
    from tenant_api.resources.lifecycle import LIFECYCLES

    rows = await admin_conn.fetch(
        "select c.relname, encode(t.tgargs, 'escape') as args from pg_trigger t join pg_class c on c.oid = t.tgrelid"
        " where t.tgname = 'guard_status' and not t.tgisinternal")
    guarded = {}
    for r in rows:
        entity, initial, moves, _started = r["args"].split("\\000")[:4]
        pairs = [m.split(">") for m in moves.strip("{}").split(",") if m]
        table_moves: dict[str, set[str]] = {}
        for old, new in pairs:
            table_moves.setdefault(old, set()).add(new)
        guarded[r["relname"]] = (entity, initial, table_moves)
    assert set(guarded) == set(LIFECYCLES), (sorted(guarded), sorted(LIFECYCLES))
    for table, machine in LIFECYCLES.items():
        expected = (machine.entity, machine.initial, {k: set(v) for k, v in machine.moves.items() if v})
        assert guarded[table] == expected, table
