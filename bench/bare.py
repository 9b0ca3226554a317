"""Baselines 4 and 5, served by the same ASGI server with the same worker count as the API.

  GET /bare/agents/{id}   the API's SQL transaction for GET /v1/agents/{id} (BEGIN,
                          auth.begin_request, the agent query, COMMIT) on a raw asyncpg
                          pool: no authentication middleware, no SQLAlchemy, no DI. The
                          bearer token is only hashed, as the database needs its hash to
                          set the context. The ceiling for Python + database here.
  GET /bare/minimal/{org}/agents/{id}
                          the minimal-context yardstick (issue 9): BEGIN, one set_config
                          of the organization (taken from the path: this design would
                          still need to learn it somewhere), the same agent query under a
                          plain policy, COMMIT, as bench_minimal (MINIMAL_DATABASE_URL).
  GET /nodb/agents/{id}   the same JSON without the database: the framework's ceiling.

Start: `uvicorn --factory bench.bare:create` with DATABASE_URL (the API role),
MINIMAL_DATABASE_URL (optional), DATABASE_POOL_SIZE and DATABASE_MAX_OVERFLOW.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from uuid import UUID, uuid4

import asyncpg
from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException

BEGIN_REQUEST = (
    "select status, token_id, organization_id, user_id, kind, role, scope_mask, project_ids, prefix, expires_at"
    " from auth.begin_request($1, $2, $3, $4)"
)
AGENT = (
    "select id, project_id, name, type, status, template_id, created_at, updated_at from agent"
    " where organization_id = $1 and id = $2"
)
MINIMAL_CONTEXT = "select set_config('app.bench_org', $1, true)"
_FIXED_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@get("/bare/agents/{agent_id:uuid}")
async def bare_agent(request: Request, state: State, agent_id: UUID) -> dict:
    token = request.headers.get("authorization", "").partition(" ")[2]
    token_hash = hashlib.sha256(token.encode()).digest()
    async with state.pool.acquire() as conn, conn.transaction():
        ctx = await conn.fetchrow(BEGIN_REQUEST, token_hash, None, None, uuid4().hex)
        row = await conn.fetchrow(AGENT, ctx["organization_id"], agent_id)
    if row is None:
        raise NotFoundException()
    return dict(row)


@get("/bare/minimal/{org:uuid}/agents/{agent_id:uuid}")
async def bare_minimal_agent(request: Request, state: State, org: UUID, agent_id: UUID) -> dict:
    token = request.headers.get("authorization", "").partition(" ")[2]
    hashlib.sha256(token.encode()).digest()  # the same work as bare_agent before the database
    async with state.minimal_pool.acquire() as conn, conn.transaction():
        await conn.fetchval(MINIMAL_CONTEXT, str(org))
        row = await conn.fetchrow(AGENT, org, agent_id)
    if row is None:
        raise NotFoundException()
    return dict(row)


@get("/nodb/agents/{agent_id:uuid}")
async def nodb_agent(agent_id: UUID) -> dict:
    return {"id": agent_id, "project_id": agent_id, "name": "agent-1", "type": "assistant", "status": "active",
            "template_id": None, "created_at": _FIXED_TIME, "updated_at": _FIXED_TIME}


@get("/health")
async def health() -> dict:
    return {"status": "ok"}


def create() -> Litestar:
    pool_size = int(os.environ.get("DATABASE_POOL_SIZE", "10"))
    overflow = int(os.environ.get("DATABASE_MAX_OVERFLOW", "10"))

    async def no_reset(conn: asyncpg.Connection) -> None:
        """The context is transaction-local (gone at COMMIT), as in the API: nothing to reset
        on release (asyncpg's default would add four statements per request)."""

    async def open_pool(app: Litestar) -> None:
        url = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
        app.state.pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size + overflow,
                                                   reset=no_reset)
        app.state.minimal_pool = None
        if minimal := os.environ.get("MINIMAL_DATABASE_URL"):
            app.state.minimal_pool = await asyncpg.create_pool(minimal, min_size=1, max_size=pool_size + overflow,
                                                               reset=no_reset)

    async def close_pool(app: Litestar) -> None:
        await app.state.pool.close()
        if app.state.minimal_pool is not None:
            await app.state.minimal_pool.close()

    return Litestar([bare_agent, bare_minimal_agent, nodb_agent, health], on_startup=[open_pool],
                    on_shutdown=[close_pool])
