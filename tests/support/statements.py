"""The SQL statements one request runs, as PostgreSQL's client (asyncpg) sends them."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import event

from tenant_api.app import create_app
from tenant_api.settings import Settings
from tests.support.tenants import Tenant


async def request_statements(settings: Settings, tenant: Tenant, method: str, path: str,
                             body: Any = None) -> tuple[int, list[str]]:
    """The request's status and statements on a one-connection pool, warmed up first by a
    read (asyncpg introspects a few types on a connection's first use, once, which is not
    the request's path), as asyncpg's query logger sees them."""
    app = create_app(settings.with_database(pool_size=1, max_overflow=0))
    seen: list[str] = []
    recording = False

    def log_query(entry: Any) -> None:
        if recording:
            seen.append(" ".join(entry.query.split()))

    event.listen(app.state.engine.sync_engine, "connect",
                 lambda dbapi_conn, _record: dbapi_conn.driver_connection.add_query_logger(log_query))
    async with AsyncTestClient(app) as c:
        assert (await c.get("/v1/agents", headers=tenant.token_auth)).status_code == 200
        await asyncio.sleep(0.2)  # (the warm-up's own log calls land first)
        recording = True
        r = await c.request(method, path, headers=tenant.token_auth, json=body)
        await asyncio.sleep(0.2)  # query loggers are called soon after, not during
        recording = False
    return r.status_code, seen
