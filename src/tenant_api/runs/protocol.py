"""The runner protocol's rules, for jobs, computer-use tasks and robot macro executions.

A runner claims the oldest queued item its credential may run (RLS decides what it may
see; ``FOR UPDATE SKIP LOCKED`` hands each item to one claimer without anyone waiting),
and gets a lease, the attempt number and a claim secret (shown once, stored as SHA-256).
While it runs, only the holder of the current claim may heartbeat (renew the lease and
report progress), append logs (jobs) and finish it; every other caller, the previous
holder after a re-claim included, gets a 409. Finishing happens once, with an exit code
(0: succeeded, anything else: failed) or an error. A lease that runs out sends the item
back to the queue (or, after its last attempt, to failed): the scheduler process does
that (auth.requeue_expired_runs, tenant_api.runs.reaper).

The database holds the same rules for every path (app.guard_run, app.guard_job_log,
revision 0013); the checks here come first so that a client gets a 409 saying why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Text, func, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.credentials import _ALPHABET, _checksum
from tenant_api.db.context import Principal
from tenant_api.db.models import (
    ComputerUseTask,
    DesktopVirtualMachine,
    Job,
    JobLog,
    Project,
    RobotMacro,
    RobotMacroExecution,
)
from tenant_api.errors import ProblemError, conflict, invalid, not_found

CLAIM_PREFIX = "trun_"
FINAL = frozenset({"succeeded", "failed", "cancelled"})

RunModel = type[Job] | type[ComputerUseTask] | type[RobotMacroExecution]


def new_claim_secret() -> str:
    """``trun_`` + 32 base62 characters + a CRC32 checksum: the API token format, with a
    prefix of its own (secret scanners can tell them apart)."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(32))
    return f"{CLAIM_PREFIX}{body}{_checksum(body)}"


def claim_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class RunKind:
    """One kind of claimable work."""

    name: str  # the table, and the kind in run_queued notifications
    label: str  # for messages: "job"
    model: Any  # Job | ComputerUseTask | RobotMacroExecution
    scope: str  # what a runner's credential needs
    result_column: str | None = None  # what finish may also set: "result", "output"


JOBS = RunKind("job", "job", Job, "tasks:write")
COMPUTER_USE_TASKS = RunKind("computer_use_task", "computer-use task", ComputerUseTask, "tasks:write", "result")
EXECUTIONS = RunKind("robot_macro_execution", "execution", RobotMacroExecution, "desktops:write", "output")
KINDS = (JOBS, COMPUTER_USE_TASKS, EXECUTIONS)


@dataclass(frozen=True)
class ClaimFilters:
    """What a runner takes: None = no filter on that."""

    project_ids: list[UUID] | None = None
    target_kinds: list[str] | None = None  # jobs: "command", "workflow"
    labels: list[str] | None = None  # jobs: the runner's labels (a job's labels must all be among them)
    vm_ids: list[UUID] | None = None  # computer-use tasks (desktop_vm_id), executions (vm_id)
    macro_ids: list[UUID] | None = None  # executions


async def check_filters(db: AsyncSession, ctx: Principal, filters: ClaimFilters, vm_field: str) -> None:
    """Ids in a claim's filters must name rows the credential can see: 422 naming the field.
    (A project outside a restricted credential's projects always is one; otherwise the ids
    are checked where the credential may read their table, e.g. projects with org:read. A
    runner token without that scope is not told about an unknown id: its filter simply
    matches nothing.)"""
    if filters.project_ids and ctx.project_ids is not None:
        outside = [p for p in filters.project_ids if p not in ctx.project_ids]
        if outside:
            raise invalid("project_ids", f"no project with id {outside[0]}")
    for field_name, ids, model, scope in (("project_ids", filters.project_ids, Project, "org:read"),
                                          (vm_field, filters.vm_ids, DesktopVirtualMachine, "desktops:read"),
                                          ("macro_ids", filters.macro_ids, RobotMacro, "desktops:read")):
        if not ids or not ctx.has_scope(scope):
            continue
        found = set(await db.scalars(select(model.id).where(model.organization_id == ctx.organization_id,
                                                            model.id.in_(ids))))
        missing = [i for i in ids if i not in found]
        if missing:
            raise invalid(field_name, f"no {model.__tablename__} with id {missing[0]}")


def _conditions(kind: RunKind, org: UUID, filters: ClaimFilters) -> list[Any]:
    m = kind.model
    where = [m.organization_id == org, m.status == "queued"]
    if filters.project_ids is not None:
        where.append(m.project_id.in_(filters.project_ids))
    if kind is JOBS:
        if filters.target_kinds is not None:
            where.append(m.target["kind"].astext.in_(filters.target_kinds))
        where.append(m.labels.contained_by(literal(filters.labels or [], ARRAY(Text))))
    if filters.vm_ids is not None:
        where.append((m.desktop_vm_id if kind is COMPUTER_USE_TASKS else m.vm_id).in_(filters.vm_ids))
    if filters.macro_ids is not None and kind is EXECUTIONS:
        where.append(m.macro_id.in_(filters.macro_ids))
    return where


async def claim(db: AsyncSession, ctx: Principal, kind: RunKind, filters: ClaimFilters,
                lease_seconds: int) -> tuple[Any, str] | None:
    """Claim the oldest queued item matching ``filters`` that the credential may run, or
    None. One statement: the sub-select locks the item with SKIP LOCKED (a concurrent
    claimer skips it, and a row another claimer has just taken no longer matches), the
    UPDATE starts the next attempt."""
    m = kind.model
    assert ctx.organization_id is not None
    oldest = (select(m.id).where(*_conditions(kind, ctx.organization_id, filters))
              .order_by(m.id).limit(1).with_for_update(skip_locked=True).scalar_subquery())
    secret = new_claim_secret()
    row = (await db.execute(
        update(m)
        .where(m.organization_id == ctx.organization_id, m.id == oldest)
        .values(status="running", attempt=m.attempt + 1,
                lease_expires_at=func.now() + dt.timedelta(seconds=lease_seconds),
                claim_secret_hash=claim_hash(secret), claimed_by_token_id=ctx.token_id,
                claimed_at=func.now(), heartbeat_at=func.now(), progress=None)
        .returning(m)
        .execution_options(synchronize_session=False)
    )).scalar_one_or_none()
    return (row, secret) if row is not None else None


@dataclass(frozen=True)
class Holding:
    """The item a claim secret holds, locked for this transaction."""

    status: str
    attempt: int
    project_id: UUID


async def held(db: AsyncSession, ctx: Principal, kind: RunKind, item_id: UUID, secret: str) -> Holding:
    """Lock the item and check that ``secret`` holds its current claim: 404 if the
    credential cannot see it, 409 (saying why, with its status and attempt) otherwise."""
    m = kind.model
    row = (await db.execute(
        select(m.status, m.attempt, m.project_id, m.claim_secret_hash,
               (m.lease_expires_at > func.now()).label("live"))
        .where(m.organization_id == ctx.organization_id, m.id == item_id)
        .with_for_update()
    )).first()
    if row is None:
        raise not_found(kind.label)
    extra = {"current_status": row.status, "attempt": row.attempt}
    if row.status != "running":
        why = "it has not been claimed" if row.status == "queued" else f"it has finished ({row.status})"
        raise conflict(f"this claim does not hold the {kind.label}: {why}", **extra)
    if row.claim_secret_hash is None or not hmac.compare_digest(row.claim_secret_hash, claim_hash(secret)):
        raise conflict(f"this claim does not hold the {kind.label}: it is held by another claim"
                       f" (attempt {row.attempt})", **extra)
    if not row.live:
        raise conflict(f"the lease on this {kind.label} has expired: it goes back to the queue", **extra)
    return Holding(status=row.status, attempt=row.attempt, project_id=row.project_id)


def progress_json(percent: float | None, message: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("percent", percent), ("message", message)) if v is not None}


async def heartbeat(db: AsyncSession, ctx: Principal, kind: RunKind, item_id: UUID, secret: str,
                    lease_seconds: int, progress: dict[str, Any] | None) -> Any:
    await held(db, ctx, kind, item_id, secret)
    m = kind.model
    values: dict[str, Any] = {"lease_expires_at": func.now() + dt.timedelta(seconds=lease_seconds),
                              "heartbeat_at": func.now()}
    if progress is not None:
        values["progress"] = progress
    return (await db.execute(
        update(m).where(m.organization_id == ctx.organization_id, m.id == item_id).values(**values)
        .returning(m).execution_options(synchronize_session=False)
    )).scalar_one()


async def finish(db: AsyncSession, ctx: Principal, kind: RunKind, item_id: UUID, secret: str,
                 exit_code: int | None, error: str | None, result: Any = None, result_given: bool = False) -> Any:
    if exit_code is None and error is None:
        raise invalid("exit_code", "finish with an exit_code (0: succeeded, anything else: failed) or an error")
    await held(db, ctx, kind, item_id, secret)
    m = kind.model
    values: dict[str, Any] = {
        "status": "succeeded" if exit_code == 0 and error is None else "failed",
        "exit_code": exit_code, "error": error, "lease_expires_at": None, "claim_secret_hash": None,
    }
    if result_given:
        if kind.result_column is None:
            raise ProblemError(422, f"a {kind.label} has no result")
        values[kind.result_column] = result
    return (await db.execute(
        update(m).where(m.organization_id == ctx.organization_id, m.id == item_id).values(**values)
        .returning(m).execution_options(synchronize_session=False)
    )).scalar_one()


async def append_log(db: AsyncSession, ctx: Principal, job_id: UUID, secret: str, data: str) -> JobLog:
    """A chunk of the job's output, by its running attempt. Bumping log_seq under the row
    lock ``held`` took makes seqs gapless and ordered by commit (see resources/jobs.py)."""
    holding = await held(db, ctx, JOBS, job_id, secret)
    seq = (await db.execute(
        update(Job).where(Job.organization_id == ctx.organization_id, Job.id == job_id)
        .values(log_seq=Job.log_seq + 1).returning(Job.log_seq).execution_options(synchronize_session=False)
    )).scalar_one()
    chunk = JobLog(organization_id=ctx.organization_id, project_id=holding.project_id, job_id=job_id,
                   seq=seq, attempt=holding.attempt, data=data)
    db.add(chunk)
    await db.flush()
    await db.refresh(chunk, attribute_names=["created_at"])
    return chunk
