"""The ORM models (src/tenant_api/db/models) agree with the migrated schema: every mapped
table exists, with the mapped columns, their types, nullability and primary key. The
migrations are the truth; a model that silently disagrees with them fails here, not in
production (a NOT NULL column the model thinks optional, a bigint mapped as an integer,
a column a migration renamed)."""

from __future__ import annotations

import pytest
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from tenant_api.db.models import Base

# Columns of mapped tables that no model maps, each with its reason. Anything else the
# schema has and a model lacks is drift.
UNMAPPED_COLUMNS = {
    # secrets and operator settings the API role cannot read; definer functions use them
    "user_account.verify_token_hash": "the verification secret's hash (policies/verification.sql)",
    "organization.rate_limit_requests": "an organization's own quota, set by operators (auth.rate_limit_of)",
    "organization.rate_limit_window_seconds": "... its window",
    # the audit trail's ordering column, read by the audit queries in SQL (audit/controller.py)
    "token_audit_log.txid": "the writing transaction's id (xid8): listing order and sealing",
    "token_usage.txid": "the same, for usage records",
    "audit_seal.last_txid": "where a seal ends in (txid, id) order",
    # generated from member_type/member_id for the composite foreign keys, never written
    "conversation_member.agent_id": "generated: member_id of an AGENT member",
    "conversation_member.user_id": "generated: member_id of a USER member",
    # the credential's effective context, kept by triggers (auth.keep_credential_context),
    # read by auth.begin_request only (policies/auth.sql)
    "platform_token.scope_mask": "one field of the credential's effective context",
    "platform_token.member_role": "one field of the credential's effective context",
    "platform_token.effective_mask": "one field of the credential's effective context",
    "platform_token.effective_projects": "one field of the credential's effective context",
    "platform_token.context_head": "one field of the credential's effective context",
    "platform_token.context_tail": "one field of the credential's effective context",
}

# Tables of the schema with no model, each with its reason.
UNMODELLED_TABLES = {
    "alembic_version": "alembic's own",
    "unattributed_security_event": "written by app.record_usage, read by operators only (never the API)",
}

SCHEMA_SQL = """
    select c.relname as tbl, a.attname as col, format_type(a.atttypid, a.atttypmod) as type,
           a.attnotnull as not_null,
           coalesce(a.attnum = any (k.conkey), false) as primary_key
      from pg_class c
      join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
      left join pg_constraint k on k.conrelid = c.oid and k.contype = 'p'
     where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
"""

# SQLAlchemy's name for a type -> PostgreSQL's (format_type), where they differ.
TYPE_NAMES = {"varchar": "text", "timestamp with time zone": "timestamp with time zone"}


def model_type(table: Table, column: str) -> str:
    compiled = table.c[column].type.compile(dialect=postgresql.dialect()).lower().replace(", ", ",")
    return TYPE_NAMES.get(compiled, compiled)


@pytest.fixture
async def schema(admin_conn) -> dict[str, dict[str, dict]]:
    """table -> column -> {type, not_null, primary_key}, as migrated."""
    out: dict[str, dict[str, dict]] = {}
    for r in await admin_conn.fetch(SCHEMA_SQL):
        out.setdefault(r["tbl"], {})[r["col"]] = dict(r)
    assert {"agent", "user_account", "token_audit_log"} <= set(out)
    return out


def drift(tables: dict[str, Table], schema: dict[str, dict[str, dict]]) -> list[str]:
    """How the mapped ``tables`` disagree with the migrated ``schema``."""
    problems = []
    for name, table in tables.items():
        columns = schema.get(name)
        if columns is None:
            problems.append(f"{name}: mapped, but no migration creates it")
            continue
        for column in table.columns:
            found = columns.get(column.name)
            where = f"{name}.{column.name}"
            if found is None:
                problems.append(f"{where}: mapped, but not in the schema")
                continue
            try:
                mapped = model_type(table, column.name)
            except Exception as exc:  # NullType: a mapping without a type
                problems.append(f"{where}: the model gives it no type ({exc.__class__.__name__})")
            else:
                if mapped != found["type"]:
                    problems.append(f"{where}: the model says {mapped}, the schema {found['type']}")
            if column.nullable == found["not_null"]:
                problems.append(f"{where}: the model says {'nullable' if column.nullable else 'NOT NULL'}, "
                                f"the schema {'NOT NULL' if found['not_null'] else 'nullable'}")
            if column.primary_key != found["primary_key"]:
                problems.append(f"{where}: primary key in the {'model' if column.primary_key else 'schema'} only")
    return problems


def test_every_model_column_matches_the_schema(schema):
    problems = drift(dict(Base.metadata.tables), schema)
    assert not problems, "\n".join(problems)


def test_every_schema_column_and_table_is_mapped_or_listed(schema):
    tables = Base.metadata.tables
    unmapped = {f"{name}.{col}" for name, table in tables.items() if name in schema
                for col in schema[name] if col not in table.c}
    assert unmapped == set(UNMAPPED_COLUMNS), (
        f"not mapped and not listed: {sorted(unmapped - set(UNMAPPED_COLUMNS))}; "
        f"listed but mapped or gone: {sorted(set(UNMAPPED_COLUMNS) - unmapped)} (UNMAPPED_COLUMNS)")
    assert set(schema) - set(tables) == set(UNMODELLED_TABLES), sorted(set(schema) - set(tables))


def test_the_comparison_notices_each_kind_of_drift(schema):
    from sqlalchemy import BigInteger, Column, MetaData, Text
    from sqlalchemy.dialects.postgresql import UUID

    metadata = MetaData()
    drifted = {
        "agent": Table("agent", metadata,
                       Column("organization_id", UUID, primary_key=True),
                       Column("id", UUID, nullable=False),  # the primary key's second column, not in the model's
                       Column("name", Text, nullable=True),  # NOT NULL in the schema
                       Column("status", BigInteger, nullable=False),  # text
                       Column("renamed", Text)),
        "no_such_table": Table("no_such_table", metadata, Column("id", UUID, primary_key=True)),
    }
    assert drift(drifted, schema) == [
        "agent.id: primary key in the schema only",
        "agent.name: the model says nullable, the schema NOT NULL",
        "agent.status: the model says bigint, the schema text",
        "agent.renamed: mapped, but not in the schema",
        "no_such_table: mapped, but no migration creates it",
    ]
