"""Settings: one frozen dataclass per concern, read from the environment on demand.

Nothing reads the environment at import time; create_app(settings) and the CLI build a
Settings explicitly, and tests build their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping


def asyncpg_url(url: str) -> str:
    """Accept libpq-style URLs (postgresql://, postgres://) and select the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise ValueError("database URLs must start with postgresql://")


@dataclass(frozen=True)
class DatabaseSettings:
    """Two connections: the API role for requests, the owner for migrations."""

    url: str = ""
    """The API role (tenant_api): owns nothing, cannot bypass RLS. DATABASE_URL."""
    owner_url: str = ""
    """The schema owner (tenant_owner), for migrations only. OWNER_DATABASE_URL."""
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout: float = 10.0
    pgbouncer: bool = False
    """Behind PgBouncer in transaction mode: no server-side prepared statement cache."""


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = ""
    jwt_issuer: str = "tenant-api"
    session_ttl_seconds: int = 12 * 3600
    token_default_ttl_days: int = 90
    token_max_ttl_days: int = 365


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    debug: bool = False


@dataclass(frozen=True)
class AuditSettings:
    """Usage recording, sealing and retention of the audit trail."""

    record_usage: bool = True
    """Record every authenticated request (token_usage). AUDIT_USAGE_ENABLED=0 turns it
    off (for the benchmark's comparison only)."""
    usage_flush_seconds: float = 1.0
    """The usage recorder writes its batch at least this often. AUDIT_USAGE_FLUSH_SECONDS."""
    usage_batch_size: int = 500
    """...and as soon as this many records wait. AUDIT_USAGE_BATCH_SIZE."""
    usage_max_pending: int = 50_000
    """Records waiting beyond this (database unreachable) are dropped and counted."""
    seal_block_size: int = 1000
    """Events per sealed block."""
    retention_days: int = 365
    """`tenant-api audit purge` default window. AUDIT_RETENTION_DAYS."""


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database = DatabaseSettings(
            url=asyncpg_url(env["DATABASE_URL"]) if env.get("DATABASE_URL") else "",
            owner_url=asyncpg_url(env["OWNER_DATABASE_URL"]) if env.get("OWNER_DATABASE_URL") else "",
            pool_size=int(env.get("DATABASE_POOL_SIZE", "10")),
            max_overflow=int(env.get("DATABASE_MAX_OVERFLOW", "10")),
            pgbouncer=env.get("DATABASE_PGBOUNCER", "") in {"1", "true", "yes"},
        )
        auth = AuthSettings(
            jwt_secret=env.get("JWT_SECRET", ""),
            session_ttl_seconds=int(env.get("SESSION_TTL_SECONDS", str(12 * 3600))),
        )
        server = ServerSettings(
            host=env.get("HOST", "127.0.0.1"),
            port=int(env.get("PORT", "8000")),
            workers=int(env.get("WORKERS", "1")),
            debug=env.get("DEBUG", "") in {"1", "true"},
        )
        audit = AuditSettings(
            record_usage=env.get("AUDIT_USAGE_ENABLED", "1") not in {"0", "false", "no"},
            usage_flush_seconds=float(env.get("AUDIT_USAGE_FLUSH_SECONDS", "1.0")),
            usage_batch_size=int(env.get("AUDIT_USAGE_BATCH_SIZE", "500")),
            retention_days=int(env.get("AUDIT_RETENTION_DAYS", "365")),
        )
        return cls(database=database, auth=auth, server=server, audit=audit)

    def with_database(self, **changes: object) -> Settings:
        return replace(self, database=replace(self.database, **changes))

    def with_auth(self, **changes: object) -> Settings:
        return replace(self, auth=replace(self.auth, **changes))

    def with_audit(self, **changes: object) -> Settings:
        return replace(self, audit=replace(self.audit, **changes))
