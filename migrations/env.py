"""Alembic environment: runs as the owner, in one transaction, then re-applies policies/.

Versioned revisions create and change tables. The SQL in policies/ (context functions,
the tenant-table pattern, the audit trigger, the definer functions and one file per
table) is idempotent and re-applied after the revisions on every upgrade, inside the
same transaction, like Flyway's repeatable migrations: a policy change needs no new
revision, and there is never a moment where a table exists without its policies.

The transaction waits at most MIGRATION_LOCK_TIMEOUT_SECONDS (5 s) for each lock. A DDL
statement queued behind a long-running transaction makes every later request on that
table queue behind it in turn; giving up instead rolls the migration back, the requests
go on, and the migration is simply run again.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from tenant_api.db.policies import apply_policies
from tenant_api.settings import Settings

config = context.config


def _owner_url() -> str:
    url = config.attributes.get("owner_url")
    if url:
        return url
    return Settings.from_env().database.owner_url


def _lock_timeout_ms() -> int:
    seconds = config.attributes.get("lock_timeout_seconds")
    if seconds is None:
        seconds = Settings.from_env().database.migration_lock_timeout_seconds
    return max(0, round(float(seconds) * 1000))


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
    with context.begin_transaction():
        # For this transaction only (SET LOCAL): a pooled owner connection keeps its own.
        connection.exec_driver_sql(f"set local lock_timeout = {_lock_timeout_ms()}")
        context.run_migrations()
        # Only at head: after a downgrade the policies of later revisions' tables
        # have nothing to apply to (dropping a table drops its policies).
        migration_context = context.get_context()
        if set(migration_context.get_current_heads()) == set(context.script.get_heads()):
            apply_policies(connection)


async def _main() -> None:
    """Connect as the owner; a caller may hand us its own (sync) connection instead."""
    engine = create_async_engine(_owner_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: policies are applied against a live database")

if (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    asyncio.run(_main())
