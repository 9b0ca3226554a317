"""Cluster bootstrap, run as a superuser: roles, the database, its privileges.

Idempotent: running it again changes nothing but the role passwords. Everything inside
the database is the migrations' job (as tenant_owner).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from tenant_api.db.policies import POLICIES_DIR


@dataclass(frozen=True)
class BootstrapResult:
    owner_url: str
    api_url: str


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
    admin_url: str, *, database: str, owner_password: str, api_password: str
) -> BootstrapResult:
    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute((POLICIES_DIR / "roles.sql").read_text())
        # Passwords are literals in ALTER ROLE (no bind parameters there); quote them.
        for role, password in (("tenant_owner", owner_password), ("tenant_api", api_password)):
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
            revoke create on schema public from public;
            alter schema public owner to tenant_owner;
            """
        )
    finally:
        await conn.close()

    return BootstrapResult(
        owner_url=_with_credentials(admin_url, "tenant_owner", owner_password, database),
        api_url=_with_credentials(admin_url, "tenant_api", api_password, database),
    )
