"""Job schedules and jobs (scope area ``tasks``); their logs are the runner protocol's (runs/logs.py).

A schedule's ``next_run_at`` is computed here on every write that can change it (cron,
timezone, enabled), in the schedule's time zone, stored in UTC; the scheduler
(tenant_api.scheduler) turns due schedules into jobs and advances them.
"""

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta
from sqlalchemy import func, select, text

from tenant_api.cron import CronError, next_run, parse, shortest_interval, zone
from tenant_api.db.models import Job, JobSchedule, Project
from tenant_api.errors import conflict, invalid
from tenant_api.inputs import Input
from tenant_api.settings import Settings
from tenant_api.resources.base import Resource, TenantService
from tenant_api.resources.lifecycle import LifecycleService, lifecycle
from tenant_api.resources.tasks import RUN_MOVES, CancelStatus, MaxAttempts, RunStatus, json_size, release_claim
from tenant_api.resources.schemas import update_of
from tenant_api.routing import Routes

# Must equal the moves given to app.guard_status in policies/job.sql (tested).
JOB_LIFECYCLE = lifecycle("job", "queued", RUN_MOVES, table="job")
ARGS_MAX = 16384

Name = Annotated[str, Meta(min_length=1, max_length=200)]
CronText = Annotated[str, Meta(min_length=1, max_length=200)]
TimeZone = Annotated[str, Meta(min_length=1, max_length=64)]
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Labels = Annotated[list[Label], Meta(max_length=20)]


class Target(Input):
    """What a job runs: a command or a workflow, by reference, with optional arguments.
    The reference runner (``tenant-api runner``) runs a command as ``ref`` with ``args``
    (a list of strings) as its arguments, without a shell, within its time limit."""

    kind: Literal["command", "workflow"]
    ref: Annotated[str, Meta(min_length=1, max_length=500)]
    args: dict[str, Any] | list[Any] | None = None


def target_json(value: Target | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Target) and value.args is not None:
        json_size("target.args", value.args, ARGS_MAX)
    return msgspec.to_builtins(value)


class JobScheduleRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    name: str
    cron: str
    timezone: str
    enabled: bool
    target: Target
    labels: list[str]
    max_attempts: int
    next_run_at: dt.datetime | None
    last_run_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class JobScheduleCreate(Input):
    project_id: UUID
    name: Name
    cron: CronText
    """5 fields (minute hour day-of-month month day-of-week) or Quartz 6/7 fields
    (second minute hour day-of-month month day-of-week [year], '?' in one day field)."""
    target: Target
    timezone: TimeZone = "UTC"
    enabled: bool = True
    labels: Labels = msgspec.field(default_factory=list)
    """Its jobs' labels: a runner claims a job only if it has every one of them."""
    max_attempts: MaxAttempts = 3
    """Its jobs' attempts: a job whose runner's lease runs out is queued again up to this."""


JobScheduleUpdate = update_of(JobScheduleCreate, exclude=("project_id",))


_LOCK_SCHEDULE_QUOTA = text("select pg_advisory_xact_lock(hashtextextended('job_schedule_quota:' || :org, 0))")
_ENABLED_SCHEDULES = text("select auth.enabled_schedule_count()")


class JobScheduleService(TenantService[JobSchedule]):
    async def before_write(self, values: dict[str, Any], existing: JobSchedule | None) -> dict[str, Any]:
        if "target" in values:
            values["target"] = target_json(values["target"])
        if existing is not None and not values.keys() & {"cron", "timezone", "enabled"}:
            return values  # nothing that moves the next run
        values = await self._next_run(values, existing)
        if values.get("enabled", existing.enabled if existing else True):
            await self._check_quota(values, existing)
        return values

    async def _check_quota(self, values: dict[str, Any], existing: JobSchedule | None) -> None:
        """The organization's bounds (ScheduleSettings): the shortest interval between
        runs (422 naming cron), and the number of enabled schedules (409), counted over
        the whole organization whatever the credential sees, one writer at a time."""
        limits = (self.app_settings or Settings()).schedules
        if limits.min_interval_seconds > 0 and ("cron" in values or "timezone" in values or existing is None):
            cron_text = values.get("cron", existing.cron if existing else "")
            timezone = values.get("timezone", existing.timezone if existing else "UTC")
            now = await self.repository.session.scalar(select(func.now()))
            shortest = shortest_interval(cron_text, timezone, now)
            if shortest is not None and shortest < limits.min_interval_seconds:
                raise invalid("cron", f"runs every {shortest:g}s at times; the minimum interval between runs is "
                                      f"{limits.min_interval_seconds}s (SCHEDULE_MIN_INTERVAL_SECONDS)")
        if limits.max_enabled_per_organization > 0 and (existing is None or not existing.enabled):
            session = self.repository.session
            await session.execute(_LOCK_SCHEDULE_QUOTA, {"org": str(self.org)})
            enabled = await session.scalar(_ENABLED_SCHEDULES)
            if enabled >= limits.max_enabled_per_organization:
                raise conflict(
                    f"the organization has {enabled} enabled schedules, its limit "
                    f"(SCHEDULE_MAX_ENABLED_PER_ORGANIZATION); disable or delete one first",
                    limit="max_enabled_schedules", max_enabled_schedules=limits.max_enabled_per_organization)

    async def _next_run(self, values: dict[str, Any], existing: JobSchedule | None) -> dict[str, Any]:
        cron_text = values["cron"].strip() if "cron" in values else existing.cron  # type: ignore[union-attr]
        timezone = values.get("timezone", existing.timezone if existing else "UTC")
        enabled = values.get("enabled", existing.enabled if existing else True)
        try:
            cron = parse(cron_text)
        except CronError as exc:
            raise invalid("cron", str(exc)) from None
        try:
            zone(timezone)
        except CronError as exc:
            raise invalid("timezone", str(exc)) from None
        now = await self.repository.session.scalar(select(func.now()))
        upcoming = next_run(cron, timezone, now)
        if upcoming is None:
            raise invalid("cron", "the expression matches no time after now")
        if "cron" in values:
            values["cron"] = cron_text
        values["next_run_at"] = upcoming if enabled else None
        return values


job_schedules = Resource(
    name="job_schedule", path="/v1/job-schedules", model=JobSchedule, area="tasks",
    read=JobScheduleRead, create=JobScheduleCreate, update=JobScheduleUpdate,
    parents={"project_id": Project},
    filters={"project_id": UUID, "enabled": bool},
    service=JobScheduleService,
)


class JobRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    schedule_id: UUID | None
    target: Target
    labels: list[str]
    status: str
    exit_code: int | None
    error: str | None
    attempt: int
    """How many times runners have claimed it (the current or last run)."""
    max_attempts: int
    lease_expires_at: dt.datetime | None
    claimed_by_token_id: UUID | None
    """The runner's token (of the current or last claim)."""
    progress: dict[str, Any] | None
    scheduled_for: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class JobCreate(Input):
    """A manual run: of a schedule (its project and, unless given, its target, labels and
    max_attempts) or of a target in a project. Starts ``queued``: a runner claims it."""

    project_id: UUID | None = None
    schedule_id: UUID | None = None
    target: Target | None = None
    labels: Labels | None = None
    max_attempts: MaxAttempts | None = None


ExitCode = Annotated[int, Meta(ge=-(2**31), lt=2**31)]


JobUpdate = update_of(
    JobCreate, keep=(), extra={"status": CancelStatus},
    doc="""Cancel a job (a runner running it finds out at its next heartbeat). Running and
    finishing are the runner protocol's (POST /v1/jobs/claim, docs/runners.md).""")


class JobService(LifecycleService[Job]):
    lifecycle = JOB_LIFECYCLE

    async def before_write(self, values: dict[str, Any], existing: Job | None) -> dict[str, Any]:
        values = await super().before_write(values, existing)
        if existing is None:
            if values.get("schedule_id") is not None:
                schedule = await self.repository.session.scalar(select(JobSchedule).where(
                    JobSchedule.organization_id == self.org, JobSchedule.id == values["schedule_id"]))
                assert schedule is not None  # check_parents: visible
                if values.get("project_id") not in (None, schedule.project_id):
                    raise invalid("project_id", "differs from the schedule's project")
                values["project_id"] = schedule.project_id
                for field in ("target", "labels", "max_attempts"):
                    if values.get(field) is None:
                        values[field] = getattr(schedule, field)
            for field in ("project_id", "target"):
                if values.get(field) is None:
                    raise invalid(field, "required unless schedule_id is given")
            values["target"] = target_json(values["target"])
            values = {k: v for k, v in values.items() if v is not None or k not in ("labels", "max_attempts")}
        return release_claim(values)


jobs = Resource(
    name="job", path="/v1/jobs", model=Job, area="tasks",
    read=JobRead, create=JobCreate, update=JobUpdate,
    parents={"project_id": Project, "schedule_id": JobSchedule},
    filters={"project_id": UUID, "schedule_id": UUID, "status": RunStatus},
    service=JobService,
)


ROUTES = Routes(resources=[job_schedules, jobs])
