"""Cluster bootstrap, run as a superuser: roles, the database, its privileges.

Idempotent: running it again changes nothing but the role passwords. Everything inside
the database is the migrations' job (as tenant_owner).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from tenant_api.db.policies import POLICIES_DIR


# The logins besides the owner and the API role (policies/roles.sql): each process kind's
# own, so that the API role's login alone opens none of their doors.
LOGINS = ("tenant_worker", "tenant_api_jobs", "tenant_login")


@dataclass(frozen=True)
class BootstrapResult:
    owner_url: str
    api_url: str
    worker_url: str = ""
    """tenant_worker: the scheduler process (WORKER_DATABASE_URL)."""
    jobs_url: str = ""
    """tenant_api_jobs: the API process's background threads (JOBS_DATABASE_URL)."""
    login_url: str = ""
    """tenant_login: the API process's public auth routes (LOGIN_DATABASE_URL)."""


def _with_credentials(admin_url: str, user: str, password: str, database: str) -> str:
    parts = urlsplit(admin_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if ":" in host and not host.startswith("[") and parts.port is None:
        host = f"[{host}]"
    netloc = f"{quote(user)}:{quote(password)}@{host}"
    return urlunsplit((parts.scheme, netloc, "/" + database, parts.query, ""))


async def bootstrap(
    admin_url: str, *, database: str, owner_password: str, api_password: str,
    worker_password: str | None = None, jobs_password: str | None = None, login_password: str | None = None,
) -> BootstrapResult:
    """Roles, passwords, the database. A login whose password is None keeps the one it
    has (a new one: none, so it cannot log in until given one)."""
    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    passwords = {"tenant_owner": owner_password, "tenant_api": api_password, "tenant_worker": worker_password,
                 "tenant_api_jobs": jobs_password, "tenant_login": login_password}
    try:
        await conn.execute((POLICIES_DIR / "roles.sql").read_text())
        # Passwords are literals in ALTER ROLE (no bind parameters there); quote them.
        for role, password in passwords.items():
            if password is None:
                continue
            literal = await conn.fetchval("select quote_literal($1)", password)
            await conn.execute(f"alter role {role} password {literal}")
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", database)
        if not exists:
            ident = await conn.fetchval("select quote_ident($1)", database)
            await conn.execute(f"create database {ident} owner tenant_owner")
    finally:
        await conn.close()

    db_admin_url = urlunsplit(urlsplit(admin_url)._replace(path="/" + database))
    conn = await asyncpg.connect(db_admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        ident = await conn.fetchval("select quote_ident($1)", database)
        # Nobody but the owner creates anything; the API role may only connect.
        await conn.execute(
            f"""
            revoke all on database {ident} from public;
            grant connect, temporary on database {ident} to tenant_owner;
            grant connect on database {ident} to tenant_api;
            grant connect on database {ident} to {", ".join(LOGINS)};
            revoke create on schema public from public;
            alter schema public owner to tenant_owner;
            """
        )
    finally:
        await conn.close()

    def url(role: str) -> str:
        password = passwords[role]
        return _with_credentials(admin_url, role, password, database) if password is not None else ""

    return BootstrapResult(owner_url=url("tenant_owner"), api_url=url("tenant_api"), worker_url=url("tenant_worker"),
                           jobs_url=url("tenant_api_jobs"), login_url=url("tenant_login"))
