"""Migrations never queue behind a long transaction while every request queues behind
them: each waits at most MIGRATION_LOCK_TIMEOUT_SECONDS for a lock, then rolls back
(migrations/env.py), and runs again once the way is clear."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command

from tenant_api.db import migrate
from tenant_api.db.bootstrap import bootstrap
from tenant_api.settings import asyncpg_url
from tests.support.database import connect
from tests.support.security import q


@dataclass(frozen=True)
class Scratch:
    admin_url: str
    owner_url: str


@pytest.fixture(scope="module")
async def scratch(admin_url: str) -> AsyncIterator[Scratch]:
    """A migrated database of its own: these tests hold locks and re-run migrations."""
    name = f"tenant_migrations_{uuid.uuid4().hex[:8]}"
    result = await bootstrap(admin_url, database=name, owner_password="owner-pw", api_password="api-pw")
    await asyncio.to_thread(migrate.upgrade, asyncpg_url(result.owner_url))
    yield Scratch(admin_url=urlunsplit(urlsplit(admin_url)._replace(path="/" + name)),
                  owner_url=asyncpg_url(result.owner_url))
    server = await connect(admin_url)
    try:
        await server.execute(f"drop database if exists {q(name)} with (force)")
    finally:
        await server.close()


async def waiting_for_a_lock(conn: asyncpg.Connection, deadline: float) -> int:
    """The pid of the migration's backend once it waits for a lock."""
    while time.monotonic() < deadline:
        pid = await conn.fetchval("select pid from pg_stat_activity where datname = current_database()"
                                  " and usename = 'tenant_owner' and wait_event_type = 'Lock'")
        if pid:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError("the migration never waited for the lock the long transaction holds")


def upgrade_with_the_setting(owner_url: str, seconds: float) -> None:
    migrate.upgrade(owner_url, lock_timeout_seconds=seconds)


def upgrade_like_the_alembic_command(owner_url: str, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """No lock_timeout attribute (e.g. `alembic upgrade head`): env.py reads the environment."""
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT_SECONDS", str(seconds))
    config = migrate.alembic_config(owner_url)
    del config.attributes["lock_timeout_seconds"]
    command.upgrade(config, "head")


@pytest.mark.parametrize("how", ["setting", "environment"])
async def test_a_migration_behind_a_long_transaction_gives_up_and_requests_go_on(scratch, how, monkeypatch):
    timeout = 1.0
    blocker, reader, watcher = [await connect(scratch.admin_url) for _ in range(3)]
    long_transaction = blocker.transaction()
    await long_transaction.start()
    try:
        # A long transaction that read agent: the migration, re-applying agent's policies,
        # needs the table's exclusive lock and has to wait for it.
        await blocker.fetchval("select count(*) from agent")
        started = time.monotonic()
        run: Any = (lambda: upgrade_with_the_setting(scratch.owner_url, timeout)) if how == "setting" else (
            lambda: upgrade_like_the_alembic_command(scratch.owner_url, timeout, monkeypatch))
        migration = asyncio.ensure_future(asyncio.to_thread(run))
        await waiting_for_a_lock(watcher, started + 20)
        # A request arriving now queues behind the migration's lock request ...
        request = asyncio.ensure_future(reader.fetchval("select count(*) from agent"))
        # ... until the migration gives up: well before the long transaction ends.
        with pytest.raises(Exception, match="lock timeout") as refused:
            await asyncio.wait_for(migration, 30)
        assert await asyncio.wait_for(request, 10) == 0
        elapsed = time.monotonic() - started
        assert timeout <= elapsed < timeout + 15, elapsed
        assert "LockNotAvailable" in repr(refused.value) or "55P03" in repr(refused.value), repr(refused.value)
        assert blocker.is_in_transaction()
        # Nothing of the migration stayed: agent still has its policies (one transaction).
        assert await reader.fetchval("select count(*) from pg_policies where tablename = 'agent'") >= 4
    finally:
        await long_transaction.rollback()
        for conn in (blocker, reader, watcher):
            await conn.close()
    # The way clear, the same migration runs.
    await asyncio.to_thread(upgrade_with_the_setting, scratch.owner_url, timeout)


async def test_without_a_competing_transaction_the_timeout_changes_nothing(scratch):
    await asyncio.to_thread(upgrade_with_the_setting, scratch.owner_url, 0.001)
    conn = await connect(scratch.admin_url)
    try:
        assert await conn.fetchval("select count(*) from pg_policies where tablename = 'agent'") >= 4
        # SET LOCAL: the setting ended with the migration's transaction.
        assert await conn.fetchval("show lock_timeout") == "0"
    finally:
        await conn.close()




@pytest.mark.parametrize("target", ["0015", "0013"])
async def test_the_last_releases_go_down_and_up_again(scratch, target):
    """Rolling back (docs/operating.md): the newest revisions undo themselves, and the
    upgrade after restores every table's policies and triggers as they were."""
    async def shape() -> list[tuple]:
        conn = await connect(scratch.admin_url)
        try:
            return [tuple(r) for r in await conn.fetch(
                "select 'policy', polrelid::regclass::text, polname from pg_policy"
                " union all select 'trigger', tgrelid::regclass::text, tgname from pg_trigger where not tgisinternal"
                " order by 1, 2, 3")]
        finally:
            await conn.close()

    before = await shape()
    await asyncio.to_thread(migrate.downgrade, scratch.owner_url, target)
    conn = await connect(scratch.admin_url)
    try:
        assert await conn.fetchval("select version_num from alembic_version") == target
    finally:
        await conn.close()
    await asyncio.to_thread(migrate.upgrade, scratch.owner_url)
    assert await shape() == before
