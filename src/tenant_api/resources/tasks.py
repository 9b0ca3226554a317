"""Tasks and computer-use tasks (scope area ``tasks``). Jobs and schedules: resources/jobs.py."""

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import exists, select

from tenant_api.db.models import Agent, ComputerUseTask, Project, Task
from tenant_api.db.models.desktops import DesktopVirtualMachine
from tenant_api.errors import invalid
from tenant_api.resources.base import Input, Resource
from tenant_api.resources.lifecycle import LifecycleService, lifecycle

# Must equal the moves given to app.guard_status in policies/task.sql (tested).
TASK_LIFECYCLE = lifecycle("task", "todo", {
    "todo": "in_progress cancelled",
    "in_progress": "todo done failed cancelled",  # back to todo: unassigned or paused
}, table="task")
# Jobs and computer-use tasks run once; policies/job.sql and computer_use_task.sql.
RUN_MOVES = {"queued": "running cancelled", "running": "succeeded failed cancelled"}
CUT_LIFECYCLE = lifecycle("computer_use_task", "queued", RUN_MOVES, table="computer_use_task")

TaskStatus = Literal["todo", "in_progress", "done", "failed", "cancelled"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
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


class TaskUpdate(Input):
    summary: Summary | UnsetType = UNSET
    details: Details | UnsetType = UNSET
    steps: Steps | UnsetType = UNSET
    agent_id: UUID | None | UnsetType = UNSET
    status: TaskStatus | UnsetType = UNSET


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
            same_project = await self.repository.session.scalar(select(exists().where(
                Agent.organization_id == self.org, Agent.id == agent_id, Agent.project_id == project_id)))
            if not same_project:
                raise invalid("agent_id", f"agent {agent_id} is not in the task's project")
        return values


tasks = Resource(
    name="task", path="/v1/tasks", model=Task, area="tasks",
    read=TaskRead, create=TaskCreate, update=TaskUpdate,
    parents={"project_id": Project, "agent_id": Agent},
    filters={"project_id": UUID, "agent_id": UUID, "status": TaskStatus},
    service=TaskService,
)


class ComputerUseTaskRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    instruction: str
    desktop_vm_id: UUID | None
    status: str
    result: dict[str, Any] | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ComputerUseTaskCreate(Input):
    project_id: UUID
    instruction: Instruction
    # Not checked yet: desktop_virtual_machine (and its foreign key) arrive separately.
    desktop_vm_id: UUID | None = None


class ComputerUseTaskUpdate(Input):
    instruction: Instruction | UnsetType = UNSET
    desktop_vm_id: UUID | None | UnsetType = UNSET
    status: RunStatus | UnsetType = UNSET
    result: dict[str, Any] | None | UnsetType = UNSET


class ComputerUseTaskService(LifecycleService[ComputerUseTask]):
    lifecycle = CUT_LIFECYCLE

    async def before_write(self, values: dict[str, Any], existing: ComputerUseTask | None) -> dict[str, Any]:
        values = await super().before_write(values, existing)
        if values.get("result") is not None:
            values["result"] = json_size("result", values["result"])
        return values


computer_use_tasks = Resource(
    name="computer_use_task", path="/v1/computer-use-tasks", model=ComputerUseTask, area="tasks",
    read=ComputerUseTaskRead, create=ComputerUseTaskCreate, update=ComputerUseTaskUpdate,
    # the VM must be visible here; the composite foreign key (0009) also keeps it in the
    # task's own project
    parents={"project_id": Project, "desktop_vm_id": DesktopVirtualMachine},
    filters={"project_id": UUID, "status": RunStatus, "desktop_vm_id": UUID},
    service=ComputerUseTaskService,
)
