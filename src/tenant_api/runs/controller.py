"""The runner protocol's routes (docs/runners.md), for each kind of claimable work:

    POST /v1/jobs/claim                              POST /v1/jobs/{item_id}/heartbeat
    POST /v1/computer-use-tasks/claim                POST /v1/jobs/{item_id}/finish
    POST /v1/robot-macro-executions/claim            POST /v1/jobs/{job_id}/logs (runs/logs.py)
    ... and heartbeat / finish under /v1/computer-use-tasks/{item_id} and
    /v1/robot-macro-executions/{item_id}.

A claim may wait for work (``wait_seconds``, a long poll woken by LISTEN/NOTIFY, see
runs/queue.py). It holds no transaction while it waits: each attempt is a short
transaction of its own, as the caller's credential (re-checked each time), under RLS.
A process shutting down (ops/shutdown.py) ends its waiting claims with a 503 and
Retry-After, which runners retry (another instance answers), rather than holding them
until the server cancels them.
"""


import asyncio
import datetime as dt
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api import idempotency
from tenant_api.auth.request import open_request_session
from tenant_api.db.context import Principal
from tenant_api.errors import ProblemError
from tenant_api.ops.metrics import RUNNER_CLAIMS_WAITING
from tenant_api.inputs import Input
from tenant_api.resources.base import to_read
from tenant_api.resources.desktops import RobotMacroExecutionRead
from tenant_api.resources.jobs import ExitCode, JobRead, Label
from tenant_api.resources.tasks import ComputerUseTaskRead, json_size
from tenant_api.runs import protocol
from tenant_api.runs.protocol import COMPUTER_USE_TASKS, EXECUTIONS, JOBS, ClaimFilters, RunKind
from tenant_api.runs.logs import job_logs_router
from tenant_api.runs.queue import RunQueueHub
from tenant_api.routing import Routes

log = logging.getLogger("tenant_api.runs")

WaitSeconds = Annotated[float, Meta(ge=0, le=30)]
LeaseSeconds = Annotated[int, Meta(ge=1, le=3600)]
Ids = Annotated[list[UUID], Meta(min_length=1, max_length=100)]
ClaimSecret = Annotated[str, Meta(min_length=1, max_length=100)]
RECHECK_SECONDS = 5.0  # a waiting claim looks again at least this often, notification or not
DRAIN_RETRY_AFTER_SECONDS = 1  # a draining process's waiting claim: retry at once (elsewhere)


class ClaimRequest(Input):
    project_ids: Ids | None = None
    """Only items of these projects (default: every project the credential may run)."""
    wait_seconds: WaitSeconds = 0
    """Wait up to this long (at most 30) for an item if none is queued now; 204 if none came."""
    lease_seconds: LeaseSeconds | None = None
    """The lease's length (default 60 s); heartbeats renew it."""


class JobClaimRequest(ClaimRequest):
    kinds: Annotated[list[Literal["command", "workflow"]], Meta(min_length=1)] | None = None
    """Only jobs whose target is of these kinds."""
    labels: Annotated[list[Label], Meta(max_length=20)] = msgspec.field(default_factory=list)
    """The runner's labels: it gets only jobs whose labels are all among them."""


class ComputerUseTaskClaimRequest(ClaimRequest):
    desktop_vm_ids: Ids | None = None
    """Only tasks for these desktop VMs."""


class ExecutionClaimRequest(ClaimRequest):
    vm_ids: Ids | None = None
    """Only executions on these VMs (a robot claims its own VM's)."""


class Progress(Input):
    percent: Annotated[float, Meta(ge=0, le=100)] | None = None
    message: Annotated[str, Meta(max_length=500)] | None = None


class Heartbeat(Input):
    claim_secret: ClaimSecret
    lease_seconds: LeaseSeconds | None = None
    """Renew the lease for this long from now (default 60 s)."""
    progress: Progress | None = None
    """Replaces the item's progress (omit to leave it as it is)."""


class Lease(msgspec.Struct):
    id: UUID
    status: str
    attempt: int
    lease_expires_at: dt.datetime | None
    progress: dict[str, Any] | None


Error = Annotated[str, Meta(min_length=1, max_length=2000)]


class JobFinish(Input):
    """An exit code (0: succeeded, anything else: failed), an error (failed), or both."""

    claim_secret: ClaimSecret
    exit_code: ExitCode | None = None
    error: Error | None = None


class ComputerUseTaskFinish(JobFinish):
    result: dict[str, Any] | UnsetType = UNSET


class ExecutionFinish(JobFinish):
    output: Any = UNSET


class JobClaim(msgspec.Struct):
    claim_secret: str
    """Proves this claim in heartbeats, logs and finish. Shown in this response only."""
    attempt: int
    max_attempts: int
    lease_expires_at: dt.datetime
    heartbeat_seconds: int
    """Send a heartbeat at least this often (a third of the lease)."""
    job: JobRead


class ComputerUseTaskClaim(msgspec.Struct):
    claim_secret: str
    attempt: int
    max_attempts: int
    lease_expires_at: dt.datetime
    heartbeat_seconds: int
    computer_use_task: ComputerUseTaskRead


class ExecutionClaim(msgspec.Struct):
    claim_secret: str
    attempt: int
    max_attempts: int
    lease_expires_at: dt.datetime
    heartbeat_seconds: int
    execution: RobotMacroExecutionRead


@dataclass(frozen=True)
class KindRoutes:
    kind: RunKind
    path: str
    tag_name: str  # operation ids: claim_<tag_name>
    claim_request: type[ClaimRequest]
    claim_response: type[msgspec.Struct]
    item_field: str  # the claim response's field holding the item
    read: type[msgspec.Struct]
    finish_request: type[JobFinish]
    filters: Callable[[Any], ClaimFilters]
    vm_field: str = "vm_ids"


KIND_ROUTES = (
    KindRoutes(JOBS, "/v1/jobs", "job", JobClaimRequest, JobClaim, "job", JobRead, JobFinish,
               lambda d: ClaimFilters(project_ids=d.project_ids, target_kinds=d.kinds, labels=d.labels)),
    KindRoutes(COMPUTER_USE_TASKS, "/v1/computer-use-tasks", "computer_use_task", ComputerUseTaskClaimRequest,
               ComputerUseTaskClaim, "computer_use_task", ComputerUseTaskRead, ComputerUseTaskFinish,
               lambda d: ClaimFilters(project_ids=d.project_ids, vm_ids=d.desktop_vm_ids), "desktop_vm_ids"),
    KindRoutes(EXECUTIONS, "/v1/robot-macro-executions", "robot_macro_execution", ExecutionClaimRequest,
               ExecutionClaim, "execution", RobotMacroExecutionRead, ExecutionFinish,
               lambda d: ClaimFilters(project_ids=d.project_ids, vm_ids=d.vm_ids)),
)


@dataclass
class FirstAttempt:
    """The claim's first transaction, opened (and the credential admitted: 401, 403) by a
    dependency before the body is validated, like every other route's."""

    session: AsyncSession | None
    principal: Principal


async def provide_first_attempt(request: Request, state: State) -> AsyncGenerator[FirstAttempt, None]:
    session, principal = await open_request_session(request, state)
    first = FirstAttempt(session, principal)
    try:
        yield first
    finally:
        if first.session is not None:  # not taken by the handler (it failed before)
            await first.session.close()


async def _claim(request: Request, state: State, routes: KindRoutes, data: ClaimRequest,
                 first: FirstAttempt) -> Response[Any]:
    settings = state.settings.runners
    hub: RunQueueHub = state.run_queue
    kind = routes.kind
    filters = routes.filters(data)
    lease = data.lease_seconds or settings.default_lease_seconds
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(data.wait_seconds, settings.max_wait_seconds)
    waiter = None
    gone: asyncio.Task[Any] | None = None  # the client hung up (a runner stopping)
    try:
        while True:
            if waiter is not None:
                waiter.wake.clear()
            if first.session is not None:
                session: AsyncSession | None = first.session
                ctx = first.principal
                first.session = None
            else:
                session, ctx = await open_request_session(request, state)
            assert session is not None and ctx.organization_id is not None
            try:
                await idempotency.bind(request, session)
                await protocol.check_filters(session, ctx, filters, routes.vm_field)
                got = await protocol.claim(session, ctx, kind, filters, lease)
                remaining = deadline - loop.time()
                if got is not None or remaining <= 0:
                    response = _claim_response(routes, got, lease)
                    if idempotency.defer_commit(request, session):
                        session = None  # the middleware stores the response and commits
                    else:
                        await session.commit()
                    return response
                # Nothing yet: end this transaction before waiting (no connection held).
                idempotency.unbind(request)
                await session.rollback()
            except BaseException:
                if session is not None:
                    await session.rollback()
                raise
            finally:
                if session is not None:
                    await session.close()
            if hub.draining:  # nothing now, and no waiting while shutting down (woken by the drain)
                raise _shutting_down()
            if waiter is None:
                # Subscribe, then claim once more at once: an item queued between the attempt
                # above and the subscription is not missed.
                waiter = hub.subscribe_claim(ctx.organization_id, kind.name)
                RUNNER_CLAIMS_WAITING.inc()
                gone = asyncio.create_task(_hung_up(request))
                try:
                    await hub.listen()
                except Exception:  # noqa: BLE001 -- the periodic re-check keeps the claim working
                    log.warning("cannot LISTEN for queued work; waiting claims poll instead", exc_info=True)
                continue
            assert gone is not None  # set with the waiter
            woken: asyncio.Task[Any] = asyncio.create_task(waiter.wake.wait())
            await asyncio.wait([woken, gone], timeout=min(remaining, RECHECK_SECONDS),
                               return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if gone.done():
                return Response(content=None, status_code=204)  # nobody is listening: claim nothing
    finally:
        if waiter is not None:
            hub.unsubscribe(waiter)
            RUNNER_CLAIMS_WAITING.dec()
        if gone is not None:
            gone.cancel()


def _shutting_down() -> ProblemError:
    return ProblemError(503, "this server is shutting down; claim again (another instance will answer)",
                        headers={"Retry-After": str(DRAIN_RETRY_AFTER_SECONDS)})


async def _hung_up(request: Request) -> None:
    """Returns once the client has gone: after the body, the server's next ASGI message is
    the disconnect (it waits for it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _claim_response(routes: KindRoutes, got: tuple[Any, str] | None, lease: int) -> Response[Any]:
    if got is None:
        return Response(content=None, status_code=204)
    row, secret = got
    body = routes.claim_response(**{
        "claim_secret": secret, "attempt": row.attempt, "max_attempts": row.max_attempts,
        "lease_expires_at": row.lease_expires_at, "heartbeat_seconds": max(1, lease // 3),
        routes.item_field: to_read(routes.read, row)})
    return Response(content=body, status_code=200)


def kind_router(routes: KindRoutes) -> Router:
    kind, tag = routes.kind, routes.tag_name
    ClaimBody, ClaimOut, Read, FinishBody = (routes.claim_request, routes.claim_response, routes.read,
                                             routes.finish_request)

    async def claim(request: Request, state: State, data: ClaimBody,  # type: ignore[valid-type]
                    first: FirstAttempt) -> Response[ClaimOut]:  # type: ignore[valid-type]
        return await _claim(request, state, routes, data, first)

    claim.__doc__ = (f"Claim the oldest queued {kind.label} this credential may run (exactly one caller gets it), "
                     "with a lease, its attempt number and a claim secret (shown once). Waits up to wait_seconds "
                     "for one; 204 if none.")

    async def heartbeat(db: AsyncSession, ctx: Principal, state: State, item_id: UUID, data: Heartbeat) -> Lease:
        lease = data.lease_seconds or state.settings.runners.default_lease_seconds
        progress = protocol.progress_json(data.progress.percent, data.progress.message) if data.progress else None
        row = await protocol.heartbeat(db, ctx, kind, item_id, data.claim_secret, lease, progress)
        return Lease(id=row.id, status=row.status, attempt=row.attempt, lease_expires_at=row.lease_expires_at,
                     progress=row.progress)

    heartbeat.__doc__ = (f"Renew the lease (and report progress) of a running {kind.label}: by the holder of its "
                         "current claim only (409 otherwise: finished, cancelled, re-claimed, lease expired).")

    async def finish(db: AsyncSession, ctx: Principal, item_id: UUID, data: FinishBody) -> Read:  # type: ignore[valid-type]
        body = cast(JobFinish, data)
        extra: dict[str, Any] = {}
        if kind.result_column is not None and getattr(body, kind.result_column) is not UNSET:
            value = getattr(body, kind.result_column)
            extra = {"result": json_size(kind.result_column, value) if value is not None else None,
                     "result_given": True}
        row = await protocol.finish(db, ctx, kind, item_id, body.claim_secret, body.exit_code, body.error, **extra)
        return to_read(Read, row)

    finish.__doc__ = (f"Finish a running {kind.label}, once: exit_code 0 succeeds it, any other exit code or an "
                      "error fails it. By the holder of its current claim only (409 otherwise).")

    handlers = [
        post("/claim", opt={"scope": kind.scope}, operation_id=f"claim_{tag}", summary=f"Claim a {kind.label}",
             description=claim.__doc__, tags=["runners"], status_code=200,
             dependencies={"first": Provide(provide_first_attempt)},
             responses={204: ResponseSpec(data_container=None, description="nothing to claim within wait_seconds")},
             )(claim),
        post("/{item_id:uuid}/heartbeat", opt={"scope": kind.scope}, operation_id=f"heartbeat_{tag}",
             summary=f"Renew a {kind.label}'s lease", description=heartbeat.__doc__, tags=["runners"],
             status_code=200)(heartbeat),
        post("/{item_id:uuid}/finish", opt={"scope": kind.scope}, operation_id=f"finish_{tag}",
             summary=f"Finish a {kind.label}", description=finish.__doc__, tags=["runners"], status_code=200)(finish),
    ]
    return Router(path=routes.path, route_handlers=handlers)


# Each kind's claim, heartbeat and finish (under /v1/jobs, ...: the runner protocol's own
# routes beside the resources'), and a job's log.
ROUTES = Routes(handlers=[*(kind_router(r) for r in KIND_ROUTES), job_logs_router])
