"""Hostile input, driven by the OpenAPI document: every operation, every path, query,
header and body field gets the boundary values of its type, with real ids made first
(tests/support/factories.py, tests/support/security.py). Nothing may answer 5xx, every refusal is a
problem document, and a refused request changes nothing in the database.

What each type gets (``values_for``): integers ±2^31, ±2^63, 2^64, 10^40, fractions,
NaN/Infinity and 1e999 literals; strings "", NUL, 1 MB, invalid UTF-8, wrong types; date-
times year 1 and 9999 with ±14:00, no zone, impossible dates; UUIDs the other
organization's row of the mapped table, nil, malformed; enums and booleans values
outside them; arrays and free objects deep nesting; and for each body as a whole: deep
nesting, invalid UTF-8, NaN, a top-level array, null, with the real credential, a forged
one that passes the checksum, and none. A new route is attacked without a new test.

Runtime: the cases of each operation run in a seeded order within an equal share of
HOSTILE_BUDGET_SECONDS (default 120); cases left out are counted and printed. Long polls
(a runner's claim with ``wait_seconds`` up to 30, whose hostile values include valid
ones) run against an app whose RUNNER_MAX_WAIT_SECONDS is LONG_POLL_SECONDS: the wait is
still taken, briefly, and cannot eat the other operations' share.

"Nothing changes": for an operation whose cases were all refused, a hash of every row of
every tenant table (token_usage aside: every request adds one; platform_token's
last_used_at and updated_at aside) is equal before and after; every refused request also leaves the
audit log's row count as it was (every tenant-table change writes an audit row).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tenant_api.app import create_app
from tenant_api.auth.credentials import new_api_token
from tests.support import factories
from tests.support.security import (
    PROBLEM,
    World,
    build_world,
    fill_path,
    flatten,
    gen_body,
    openapi,
    operations,
    own_path,
    q,
    request_schema,
    resolve,
    row_ids,
    schema_type,
    tenant_refs,
    tenant_tables,
)

BUDGET_SECONDS = float(os.environ.get("HOSTILE_BUDGET_SECONDS", "120"))
LONG_POLL_SECONDS = 0.2
SEED = int(os.environ.get("HOSTILE_SEED", "10"))
MEGABYTE = 1024 * 1024

DEEP = 3000


@dataclass(frozen=True)
class Raw:
    """JSON text spliced verbatim into an encoded body (or a query string): what json.dumps
    cannot produce (NaN, 1e999, invalid UTF-8, nesting beyond any recursion limit)."""

    text: bytes


RAW_NUMBERS = [Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"1e999"), Raw(b"-1e999")]
RAW_DEEP = [Raw(b"[" * DEEP + b"]" * DEEP), Raw(b'{"a":' * DEEP + b"1" + b"}" * DEEP)]
RAW_BAD_UTF8 = Raw(b'"\xff\xfe bad utf-8 \xc3\x28"')
INTS = [2**31, -(2**31) - 1, 2**31 - 1, 2**63, -(2**63) - 1, 2**63 - 1, 2**64, 10**40, -1, 0, 1.5]
TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z",
         "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999998Z",
         "2030-01-01T00:00:00", "2030-02-30T00:00:00Z", "24:61", "99999-01-01T00:00:00Z"]
STRINGS = ["", "\x00", "a\x00b", "x" * MEGABYTE, "x" * 32_000, "\u202e\ud7ff\U0001f4a5", 12345, ["list"],
           {"an": "object"}]
NIL = "00000000-0000-0000-0000-000000000000"


@dataclass
class Case:
    method: str
    url: str  # path, with an encoded query string when the case attacks one
    what: str
    headers: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None


def encode_body(value: Any) -> bytes:
    """JSON, with each Raw value's text in place."""
    spliced: list[bytes] = []

    def mark(v: Any) -> str:
        if isinstance(v, Raw):
            spliced.append(v.text)
            return f"@@raw{len(spliced) - 1}@@"
        raise TypeError(type(v))

    out = json.dumps(value, default=mark).encode()
    for i, text in enumerate(spliced):
        out = out.replace(f'"@@raw{i}@@"'.encode(), text)
    return out


def query_value(value: Any) -> str:
    """A parameter value, percent-encoded (Raw bytes as they are, invalid UTF-8 included)."""
    text = value.text if isinstance(value, Raw) else (value if isinstance(value, str) else json.dumps(value)).encode()
    return quote_from_bytes(text, safe="")


def values_for(doc: dict[str, Any], name: str, schema: dict[str, Any], other_ids: dict[str, str],
               depth: int = 0) -> list[Any]:
    """The boundary values of a field's type (see the module doc)."""
    s = flatten(doc, schema)
    t, fmt = schema_type(s), s.get("format")
    if "enum" in s:
        return ["not-one-of-them", "\x00", 2**63, None, RAW_DEEP[0]]
    if t == "string" and fmt == "uuid":
        table = factories.UUID_FIELDS.get(name)
        other = [other_ids[table]] if table in other_ids else []
        return [*other, NIL, "not-a-uuid", "\x00", 2**63, str(uuid.uuid4()).upper() + "x"]
    if t == "string" and fmt in ("date-time", "date"):
        return [*TIMES, 2**63]
    if t == "string":
        return [*STRINGS, RAW_BAD_UTF8]
    if t in ("integer", "number"):
        return [*INTS, *RAW_NUMBERS, "12", None]
    if t == "boolean":
        return ["yes", 2, None, 2**63]
    if t == "array":
        items = s.get("items", {})
        inner = [] if depth else [[v] for v in values_for(doc, name, items, other_ids, depth + 1)][:6]
        return [*inner, [None] * 10_000, "not-an-array", *RAW_DEEP]
    if t == "object" or t is None:
        return [{"\x00": 1}, {"k": "\x00"}, {"n": 2**64}, {"big": "x" * MEGABYTE}, "not-an-object", *RAW_DEEP, None]
    raise AssertionError(f"{name}: no hostile values for schema {s}")


def parameter_cases(doc: dict[str, Any], method: str, template: str, op: dict[str, Any], own: str,
                    other: str, headers: dict[str, str], other_ids: dict[str, str]) -> list[Case]:
    """Every path, query and header parameter, one hostile value at a time (others valid)."""
    cases: list[Case] = []
    for param in op.get("parameters", []):
        where, name = param["in"], param["name"]
        if where == "path":
            # Another organization's row (nested: under our own parent), nil, malformed, NUL.
            values = [other, fill_path(template, {name: NIL}), fill_path(template, {name: "not-a-uuid"}),
                      fill_path(template, {name: "%00"}), fill_path(template, {name: "%FF%FE"}),
                      fill_path(template, {name: "9" * 5000})]
            for path in values:
                for p in op.get("parameters", []):  # the other path parameters: our own rows
                    if p["in"] == "path":
                        path = path.replace("{" + p["name"] + "}", own_value(own, template, p["name"]))
                cases.append(Case(method, path, f"path {name}", headers))
            continue
        if where == "header":  # text, whatever its schema's type: see header_values
            cases += [Case(method, own, f"header {name}={raw[:40]!r}", {**headers, name: raw})
                      for raw in header_values(doc, param.get("schema", {}))]
            continue
        for value in values_for(doc, name, param.get("schema", {}), other_ids):
            if value is None or (isinstance(value, str) and len(value) > 32_000):  # URLs end at 64 KB
                continue
            cases.append(Case(method, f"{own}?{name}={query_value(value)}", f"{where} {name}={str(value)[:40]!r}",
                              headers))
    return cases


def header_values(doc: dict[str, Any], schema: dict[str, Any]) -> list[bytes]:
    """What is hostile in a header's text (sent as bytes, as a client may): empty, one
    past its length, non-ASCII and invalid UTF-8 bytes. (Values a client cannot send at
    all, NUL, CR and LF, are refused by the HTTP layer before any application.)"""
    s = flatten(doc, schema)
    longest = s.get("maxLength", 8191)
    return [b"", b"x" * (longest + 1), "\u00fc\u00df".encode(), b"\xff\xfe", RAW_BAD_UTF8.text]


def own_value(own: str, template: str, name: str) -> str:
    """The value ``own`` (the template filled with our rows) has for path parameter ``name``."""
    t_parts, o_parts = template.split("/"), own.split("/")
    for t_part, o_part in zip(t_parts, o_parts, strict=True):
        if t_part == "{" + name + "}":
            return o_part
    raise AssertionError(f"{template}: no parameter {name}")


def credential_cases(method: str, own: str) -> list[Case]:
    """Credentials that must be refused without a trace (the route's own credential is
    never sent here: one of them ends it)."""
    forged_jwt = ".".join(["eyJhbGciOiJub25lIn0", "eyJzaWQiOjF9", ""])  # alg none
    return [Case(method, own, f"credential {label}", {"Authorization": value}) for label, value in [
        ("forged token", f"Bearer {new_api_token()}"), ("bad checksum", "Bearer tapi_" + "a" * 38),
        ("alg none", f"Bearer {forged_jwt}"), ("8 KB", "Bearer " + "x" * 8192), ("basic", "Basic YTpi"),
        ("empty", "Bearer "), ("latin-1", b"Bearer \xff\xfe"),
    ]]


def body_cases(doc: dict[str, Any], method: str, template: str, op: dict[str, Any], own: str,
               headers: dict[str, str], refs: dict[str, str], other_ids: dict[str, str]) -> list[Case]:
    schema = request_schema(doc, op)
    if schema is None:
        return []
    where = f"{method} {template}"
    valid = gen_body(doc, schema, refs, uuid.uuid4().hex[:8], where, factories.BODY_OVERRIDES.get((method, template)))
    forged = {"Authorization": f"Bearer {new_api_token()}"}
    cases = []
    # The body as a whole: decoded before the database sees the credential.
    for label, text in [("deep array", "[" * DEEP + "]" * DEEP), ("deep object", '{"a":' * DEEP + "1" + "}" * DEEP),
                        ("NaN", '{"x": NaN}'), ("1e999", "[1e999]"), ("top-level array", "[1, 2]"), ("null", "null"),
                        ("not json", "{'a': 1"), ("empty", "")]:
        for who, h in (("credential", headers), ("forged token", forged), ("no credential", {})):
            cases.append(Case(method, own, f"body {label} ({who})", h, body=text.encode()))
    cases.append(Case(method, own, "body invalid UTF-8", headers, body=b'{"x": "\xff\xfe"}'))
    cases.append(Case(method, own, "body 1 MB of spaces", headers, body=b" " * MEGABYTE + b"{}"))
    # One field at a time (the others valid), nested objects one level down.
    for name, prop in resolve(doc, schema).get("properties", {}).items():
        for value in values_for(doc, name, prop, other_ids):
            cases.append(Case(method, own, f"body {name}={str(value)[:40]!r}", headers,
                              body=encode_body({**valid, name: value})))
        nested = flatten(doc, prop)
        if schema_type(nested) == "object" and "properties" in nested and isinstance(valid.get(name), dict):
            for sub, sub_prop in nested["properties"].items():
                for value in values_for(doc, sub, sub_prop, other_ids, depth=1)[:8]:
                    cases.append(Case(method, own, f"body {name}.{sub}={str(value)[:40]!r}", headers,
                                      body=encode_body({**valid, name: {**valid[name], sub: value}})))
    return cases


# --- the database, before and after -----------------------------------------------------

async def table_hashes(conn: asyncpg.Connection, orgs: list[uuid.UUID]) -> dict[str, str]:
    """Row count and hash of every row of the two organizations in every tenant table, in
    one statement. (Only theirs: background work of other test modules, e.g. the desktop
    reaper closing their sockets, must not make this test flaky.)"""
    tables = [t for t in await tenant_tables(conn) if t != "token_usage"]
    parts = []
    for table in [*tables, "organization", "user_account"]:
        # A credential's use stamps last_used_at (and so updated_at) once a minute, refused or not.
        row = "to_jsonb(x) - 'last_used_at' - 'updated_at'" if table == "platform_token" else "to_jsonb(x)"
        where = {"organization": "x.id = any($1)",
                 "user_account": "x.id in (select user_id from organization_membership where organization_id = any($1))"
                 }.get(table, "x.organization_id = any($1)")
        parts.append(f"select {table!r} as t, count(*)::text || ':' || coalesce(md5(string_agg(({row})::text, ','"
                     f" order by ({row})::text)), '') as h from public.{q(table)} x where {where}")
    rows = await conn.fetch(" union all ".join(parts), orgs)
    return {r["t"]: r["h"] for r in rows}


async def audit_rows(conn: asyncpg.Connection, orgs: list[uuid.UUID]) -> int:
    return await conn.fetchval("select count(*) from token_audit_log where organization_id = any($1)", orgs)


# --- the sweep --------------------------------------------------------------------------

class TracebackCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            self.records.append(record)


@pytest.fixture(scope="module")
async def client(settings) -> AsyncIterator[AsyncTestClient]:
    """This module's app: the suite's settings, long polls capped (see the module doc)."""
    async with AsyncTestClient(create_app(settings.with_runners(max_wait_seconds=LONG_POLL_SECONDS))) as c:
        yield c


@pytest.fixture(scope="module")
async def world(client, module_admin) -> World:
    return await build_world(client, module_admin, "hostile")


async def test_no_operation_answers_5xx_or_changes_anything_when_refusing(world, client, module_admin, capsys):
    doc = openapi(client)
    a, b = world.a, world.b
    refs = await tenant_refs(module_admin, a)
    other_ids = await tenant_refs(module_admin, b)
    orgs = [uuid.UUID(a.organization_id), uuid.UUID(b.organization_id)]
    ops = operations(doc)
    rng = random.Random(SEED)
    share = BUDGET_SECONDS / len(ops)
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    ran, skipped, attacked, done = 0, 0, set(), set()
    started = time.monotonic()
    tracebacks = TracebackCatcher()
    logging.getLogger().addHandler(tracebacks)

    for method, template, op in ops:
        public = (method, template) in factories.PUBLIC_OPERATIONS
        headers = {} if public else a.token_auth
        own = await own_path(module_admin, a, template, op)
        mapping = factories.path_params(template) or {}
        other = template
        for p in [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]:
            ids = await row_ids(module_admin, mapping[p], b.organization_id, 1)
            other = other.replace("{" + p + "}", ids[0])
        if (method, template) in factories.STREAMS:
            # A stream we may read never ends: attack it under the other organization's
            # conversation (parameters are validated before the 404).
            own = other
        cases = credential_cases(method, own)
        cases += parameter_cases(doc, method, template, op, own, other, headers, other_ids)
        cases += body_cases(doc, method, template, op, own, headers, refs, other_ids)
        rng.shuffle(cases)
        # Structural body attacks first: they are what a hostile integration tries first.
        cases.sort(key=lambda c: not c.what.startswith("body ") or "=" in c.what)
        # Time a fast operation leaves unused passes on to the next ones.
        deadline = started + share * (len(done) + 1)
        done.add((method, template))
        before = await table_hashes(module_admin, orgs)
        changed = False
        for case in cases:
            if time.monotonic() > deadline:
                skipped += 1
                continue
            audit_before = await audit_rows(module_admin, orgs)
            request_headers = dict(case.headers)
            if case.body is not None:
                request_headers["Content-Type"] = "application/json"
            try:
                r = await client.request(case.method, case.url, headers=request_headers, content=case.body)
            except Exception as exc:  # noqa: BLE001 - the app must answer, whatever it got
                failures.append(f"{case.method} {template} [{case.what}]: raised {type(exc).__name__}: {exc}"[:400])
                continue
            ran += 1
            attacked.add((method, template))
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                failures.append(f"{case.method} {template} [{case.what}]: {r.status_code} {r.text[:300]}")
            elif r.status_code >= 400:
                if not r.headers.get("content-type", "").startswith(PROBLEM):
                    failures.append(f"{case.method} {template} [{case.what}]: {r.status_code} not a problem: "
                                    f"{r.headers.get('content-type')}")
                if await audit_rows(module_admin, orgs) != audit_before:
                    failures.append(f"{case.method} {template} [{case.what}]: {r.status_code} but a change was audited")
            elif case.method != "GET":
                changed = True  # an accepted write: this operation's tables may differ afterwards
        if not changed:
            after = await table_hashes(module_admin, orgs)
            diff = sorted(t for t in before if before[t] != after.get(t))
            if diff:
                failures.append(f"{method} {template}: every case refused, yet tables changed: {diff}")

    logging.getLogger().removeHandler(tracebacks)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nhostile input: {ran} requests on {len(attacked)}/{len(ops)} operations in {elapsed:.0f}s "
              f"(budget {BUDGET_SECONDS:.0f}s, {skipped} cases left out), statuses {dict(sorted(statuses.items()))}")
    assert not failures, f"{len(failures)} hostile inputs mishandled:\n" + "\n".join(failures[:60])
    # Refused garbage is no bug: it must not fill the log with tracebacks.
    assert not tracebacks.records, [f"{r.name}: {r.getMessage()}" for r in tracebacks.records[:10]]
    assert attacked == {(m, p) for m, p, _ in ops}, "operations never attacked (raise HOSTILE_BUDGET_SECONDS)"
