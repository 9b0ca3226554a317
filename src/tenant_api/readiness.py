"""/ready: may this process take traffic? /health only says the process is alive.

Ready means the database answers (within a short timeout, on a pooled connection as the
API role) and its schema is at this code's alembic head. A database still on an older
revision ("migrations are behind": a deploy ran the code before `tenant-api migrate`)
is not ready; a revision this code does not know is a newer deploy's migration, applied
before its code rolls out, and the old code keeps serving (expand/contract migrations).
The API role reads ``alembic_version`` through one column grant (policies/readiness.sql).
A process draining for shutdown (tenant_api.ops.shutdown) is not ready either.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import cache

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text

from tenant_api.errors import RETRY_AFTER_SECONDS, database_unavailable
from tenant_api.routing import Routes

log = logging.getLogger("tenant_api.ready")

READY_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Revisions:
    head: str
    known: frozenset[str]


@cache
def code_revisions() -> Revisions:
    """This code's alembic head and every revision before it (read from migrations/ once)."""
    from alembic.script import ScriptDirectory

    from tenant_api.db.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config(""))
    head = script.get_current_head()
    assert head is not None, "migrations/ has no head revision"
    return Revisions(head=head, known=frozenset(r.revision for r in script.walk_revisions()))


def _not_ready(reason: str, **extra: object) -> Response:
    return Response({"status": "unavailable", "reason": reason, **extra}, status_code=503,
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


# Not counted against any quota: probes poll it from one address (like /health, /metrics).
@get("/ready", opt={"public": True, "rate_limit": False}, operation_id="ready", tags=["meta"],
     include_in_schema=False)
async def ready(state: State) -> Response:
    drain = state.get("drain")
    if drain is not None and drain.draining:  # SIGTERM: let the balancer stop sending traffic
        return _not_ready("shutting down")
    revisions = code_revisions()
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), state.engine.connect() as conn:
            versions = set((await conn.execute(text("select version_num from public.alembic_version"))).scalars())
    except Exception as exc:  # noqa: BLE001 - whatever it is, this process cannot serve
        if not database_unavailable(exc):
            log.warning("readiness check failed: %s", type(exc).__name__)
        return _not_ready("database unreachable")
    report = {"database_version": sorted(versions), "code_head": revisions.head}
    if revisions.head not in versions and (not versions or versions & revisions.known):
        return _not_ready("migrations behind", **report)
    return Response({"status": "ready", **report})


@get("/health", opt={"public": True, "rate_limit": False}, operation_id="health", tags=["meta"],
     include_in_schema=False)
async def health() -> dict[str, str]:
    """Liveness: the process answers (no database)."""
    return {"status": "ok"}


ROUTES = Routes(handlers=[health, ready])
