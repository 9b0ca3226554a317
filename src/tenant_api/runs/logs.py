"""A job's log (scope area ``tasks``): its runner appends chunks, readers follow them.

Logs are appended in chunks. Each append bumps the job's ``log_seq`` with
``UPDATE ... RETURNING`` in the request's transaction: the job's row lock orders
concurrent appends, so seqs are gapless and chunk n is committed before chunk n+1 gets
its number. A reader following ``next_after`` therefore never skips a chunk.
"""

import datetime as dt
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Router, get, post
from litestar.params import Parameter
from msgspec import Meta
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import Job, JobLog
from tenant_api.errors import invalid, not_found
from tenant_api.inputs import INT64_MAX, Input
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tenant_api.runs import protocol

LOG_CHUNK_MAX = 65536  # bytes of UTF-8 per appended chunk


class LogAppend(Input):
    claim_secret: Annotated[str, Meta(min_length=1, max_length=100)]
    """The secret of the claim that holds the job: only its running attempt appends."""
    data: Annotated[str, Meta(min_length=1)]


class LogChunk(msgspec.Struct):
    id: UUID
    seq: int
    attempt: int
    """The attempt (claim) that wrote it."""
    data: str
    created_at: dt.datetime


class LogPage(msgspec.Struct):
    items: list[LogChunk]
    next_after: int
    """Pass as ``after`` to read on; unchanged when nothing new arrived."""
    job_status: str
    """A tail can stop once this is final and ``items`` is empty."""


@post("/", opt={"scope": "tasks:write"}, operation_id="append_job_log", summary="Append a log chunk (the runner)",
      tags=["runners"], status_code=201)
async def append_job_log(db: AsyncSession, ctx: Principal, job_id: UUID, data: LogAppend) -> LogChunk:
    """By the holder of the job's current claim only (409 for anyone else, the previous
    holder after a re-claim included); closed once the job has finished."""
    if len(data.data.encode()) > LOG_CHUNK_MAX:
        raise invalid("data", f"at most {LOG_CHUNK_MAX} bytes per chunk; split larger output")
    chunk = await protocol.append_log(db, ctx, job_id, data.claim_secret, data.data)
    return LogChunk(id=chunk.id, seq=chunk.seq, attempt=chunk.attempt, data=chunk.data, created_at=chunk.created_at)


@get("/", opt={"scope": "tasks:read"}, operation_id="list_job_logs", summary="Read log chunks in order",
     tags=["tasks"])
async def list_job_logs(
    db: AsyncSession,
    ctx: Principal,
    job_id: UUID,
    after: int = Parameter(default=0, ge=0, le=INT64_MAX, description="the seq of the last chunk already read"),
    limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
) -> LogPage:
    status = await db.scalar(select(Job.status).where(Job.organization_id == ctx.organization_id, Job.id == job_id))
    if status is None:
        raise not_found("job")
    rows = (await db.scalars(
        select(JobLog)
        .where(JobLog.organization_id == ctx.organization_id, JobLog.job_id == job_id, JobLog.seq > after)
        .order_by(JobLog.seq)
        .limit(limit)
    )).all()
    return LogPage(items=[LogChunk(id=r.id, seq=r.seq, attempt=r.attempt, data=r.data, created_at=r.created_at)
                          for r in rows],
                   next_after=rows[-1].seq if rows else after, job_status=status)


job_logs_router = Router(path="/v1/jobs/{job_id:uuid}/logs", route_handlers=[append_job_log, list_job_logs])
