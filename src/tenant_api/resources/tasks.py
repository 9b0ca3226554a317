"""Tasks and computer-use tasks (scope area ``tasks``). Jobs and schedules: resources/jobs.py."""

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from tenant_api.db.models import Agent, ComputerUseTask, Project, Task
from tenant_api.db.models.desktops import DesktopVirtualMachine
from tenant_api.errors import invalid
from tenant_api.inputs import Input
from tenant_api.resources.base import Resource
from tenant_api.resources.lifecycle import LifecycleService, lifecycle
from tenant_api.resources.schemas import update_of
from tenant_api.routing import Routes

# Must equal the moves given to app.guard_status in policies/task.sql (tested).
TASK_LIFECYCLE = lifecycle("task", "todo", {
    "todo": "in_progress cancelled",
    "in_progress": "todo done failed cancelled",  # back to todo: unassigned or paused
}, table="task")
# Jobs, computer-use tasks and robot macro executions are run by runners (tenant_api.runs):
# claimed (queued -> running), finished, or back to the queue when the lease runs out.
# policies/job.sql, computer_use_task.sql, robot_macro_execution.sql hold the same moves.
RUN_MOVES = {"queued": "running cancelled", "running": "queued succeeded failed cancelled"}
CUT_LIFECYCLE = lifecycle("computer_use_task", "queued", RUN_MOVES, table="computer_use_task")

def release_claim(values: dict[str, Any]) -> dict[str, Any]:
    """Cancelling a run (a PATCH) ends the claim a runner may hold on it: no lease, no
    claim secret (its runner learns at its next heartbeat: 409)."""
    if values.get("status") == "cancelled":
        values.update(lease_expires_at=None, claim_secret_hash=None)
    return values


TaskStatus = Literal["todo", "in_progress", "done", "failed", "cancelled"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# The only move a PATCH makes on a run; the others belong to the runner protocol.
CancelStatus = Literal["cancelled"]
MaxAttempts = Annotated[int, Meta(ge=1, le=100)]
Summary = Annotated[str, Meta(min_length=1, max_length=500)]
Details = Annotated[str, Meta(max_length=20000)]
Instruction = Annotated[str, Meta(min_length=1, max_length=20000)]
JSON_MAX = 65536


def json_size(field: str, value: Any, limit: int = JSON_MAX) -> Any:
    """The value as JSON-ready builtins, or 422 naming the field if it is too large."""
    if len(msgspec.json.encode(value)) > limit:
        raise invalid(field, f"at most {limit} bytes of JSON")
    return msgspec.to_builtins(value)


class Step(Input):
    title: Annotated[str, Meta(min_length=1, max_length=500)]
    done: bool = False


Steps = Annotated[list[Step], Meta(max_length=200)]


class TaskRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    agent_id: UUID | None
    summary: str
    details: str
    steps: list[Step]
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime


class TaskCreate(Input):
    """A task starts as ``todo``; its status then moves through PATCH."""

    project_id: UUID
    summary: Summary
    details: Details = ""
    steps: Steps = msgspec.field(default_factory=list)
    agent_id: UUID | None = None


TaskUpdate = update_of(TaskCreate, exclude=("project_id",), extra={"status": TaskStatus})


class TaskService(LifecycleService[Task]):
    lifecycle = TASK_LIFECYCLE

    async def before_write(self, values: dict[str, Any], existing: Task | None) -> dict[str, Any]:
        values = await super().before_write(values, existing)
        if "steps" in values:
            values["steps"] = msgspec.to_builtins(values["steps"])
        if (agent_id := values.get("agent_id")) is not None:
            # check_parents made sure the agent is visible; the composite foreign key
            # requires it in the task's project: say so with a 422 naming the field.
            project_id = existing.project_id if existing is not None else values["project_id"]
            same_project = await self.writes.exists(await self.connection(), Agent, self.org, agent_id,
                                                    project_id=project_id)
            if not same_project:
                raise invalid("agent_id", f"agent {agent_id} is not in the task's project")
        return values


tasks = Resource(
    name="task", path="/v1/tasks", model=Task, area="tasks",
    read=TaskRead, create=TaskCreate, update=TaskUpdate,
    parents={"project_id": Project, "agent_id": Agent},
    filters={"project_id": UUID, "agent_id": UUID, "status": TaskStatus},
    service=TaskService, write_path="fast",
)


class ComputerUseTaskRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    instruction: str
    desktop_vm_id: UUID | None
    status: str
    result: dict[str, Any] | None
    exit_code: int | None
    error: str | None
    attempt: int
    """How many times runners have claimed it (the current or last run)."""
    max_attempts: int
    lease_expires_at: dt.datetime | None
    claimed_by_token_id: UUID | None
    """The runner's token (of the current or last claim)."""
    progress: dict[str, Any] | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ComputerUseTaskCreate(Input):
    """Starts ``queued``; a runner claims it (POST /v1/computer-use-tasks/claim)."""

    project_id: UUID
    instruction: Instruction
    desktop_vm_id: UUID | None = None
    max_attempts: MaxAttempts = 3


ComputerUseTaskUpdate = update_of(
    ComputerUseTaskCreate, exclude=("project_id", "max_attempts"), extra={"status": CancelStatus},
    doc="""Change what it is while it waits, or cancel it (a runner finds out at its next
    heartbeat). Running and finishing are the runner's (docs/runners.md).""")


class ComputerUseTaskService(LifecycleService[ComputerUseTask]):
    lifecycle = CUT_LIFECYCLE

    async def before_write(self, values: dict[str, Any], existing: ComputerUseTask | None) -> dict[str, Any]:
        return release_claim(await super().before_write(values, existing))


computer_use_tasks = Resource(
    name="computer_use_task", path="/v1/computer-use-tasks", model=ComputerUseTask, area="tasks",
    read=ComputerUseTaskRead, create=ComputerUseTaskCreate, update=ComputerUseTaskUpdate,
    # the VM must be visible here; the composite foreign key (0009) also keeps it in the
    # task's own project
    parents={"project_id": Project, "desktop_vm_id": DesktopVirtualMachine},
    filters={"project_id": UUID, "status": RunStatus, "desktop_vm_id": UUID},
    service=ComputerUseTaskService, write_path="fast",
)


ROUTES = Routes(resources=[tasks, computer_use_tasks])
