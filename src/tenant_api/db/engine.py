"""The API role's engine and the session factory whose transactions carry the request context."""

from __future__ import annotations

from uuid import uuid4

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from tenant_api.db.context import ContextSession
from tenant_api.settings import DatabaseSettings


def create_api_engine(settings: DatabaseSettings) -> AsyncEngine:
    connect_args: dict[str, object] = {
        # Fail fast rather than queue forever; statement_timeout guards the pool.
        "server_settings": {"application_name": "tenant-api", "statement_timeout": "30000"},
        # A server that does not answer is a 503 within seconds, not a request hanging
        # for asyncpg's default minute.
        "timeout": settings.connect_timeout,
    }
    if settings.pgbouncer:
        # PgBouncer in transaction mode hands each transaction to any server
        # connection: named prepared statements must not outlive a transaction.
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = lambda: f"__ta_{uuid4().hex}__"
    return create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_pre_ping=False,
        # Bound parameters (password hashes, token hashes, user data) never reach
        # exception messages or logs.
        hide_parameters=True,
        connect_args=connect_args,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(
        engine,
        sync_session_class=ContextSession,
        expire_on_commit=False,
        autoflush=False,
    )
