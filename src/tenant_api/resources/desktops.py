"""Desktops (scope area ``desktops``): VM configs, virtual machines with their status
lifecycle, robot macros and their executions. The robot clients' WebSocket and the
connection rows are in desktop_connections.py."""

import datetime as dt
import ipaddress
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import post
from msgspec import Meta
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import (
    DesktopConfig,
    DesktopVirtualMachine,
    Project,
    RobotMacro,
    RobotMacroExecution,
)
from tenant_api.errors import conflict, invalid
from tenant_api.inputs import Input
from tenant_api.resources.base import Nest, Resource, TenantService, to_read
from tenant_api.resources.lifecycle import lifecycle
from tenant_api.resources.tasks import RUN_MOVES, CancelStatus, MaxAttempts, release_claim
from tenant_api.resources.schemas import update_of
from tenant_api.routing import Routes

Name = Annotated[str, Meta(min_length=1, max_length=200)]
Description = Annotated[str, Meta(max_length=2000)]
JSON_LIMIT = 65536  # bytes of JSON for settings, steps, output: documents, not blobs


def check_json_size(field: str, value: Any) -> None:
    if len(msgspec.json.encode(value)) > JSON_LIMIT:
        raise invalid(field, f"at most {JSON_LIMIT} bytes of JSON")


async def vm_in_project(db: AsyncSession, org: UUID, vm_id: UUID, project_id: UUID) -> DesktopVirtualMachine:
    """A body's vm_id must name a visible VM of the row's own project (the composite
    foreign key guarantees it; this says which field is wrong)."""
    vm = await db.scalar(
        select(DesktopVirtualMachine).where(DesktopVirtualMachine.organization_id == org,
                                            DesktopVirtualMachine.id == vm_id)
    )
    if vm is None:
        raise invalid("vm_id", f"no desktop_virtual_machine with id {vm_id}")
    if vm.project_id != project_id:
        raise invalid("vm_id", "the VM belongs to another project")
    return vm


# --- desktop_configs -------------------------------------------------------------------

Image = Annotated[str, Meta(min_length=1, max_length=500)]
Cpu = Annotated[int, Meta(ge=1, le=64)]
MemoryMb = Annotated[int, Meta(ge=512, le=262144)]
DiskGb = Annotated[int, Meta(ge=10, le=4096)]


class DesktopConfigRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    name: str
    image: str
    cpu: int
    memory_mb: int
    disk_gb: int
    settings: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class DesktopConfigCreate(Input):
    project_id: UUID
    name: Name
    image: Image
    cpu: Cpu = 2
    memory_mb: MemoryMb = 4096
    disk_gb: DiskGb = 40
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


DesktopConfigUpdate = update_of(DesktopConfigCreate, exclude=("project_id",))


class DesktopConfigService(TenantService[DesktopConfig]):
    async def before_write(self, values: dict[str, Any], existing: DesktopConfig | None) -> dict[str, Any]:
        if "settings" in values:
            check_json_size("settings", values["settings"])
        return values


desktop_configs = Resource(
    name="desktop_config", path="/v1/desktop-configs", model=DesktopConfig, area="desktops",
    read=DesktopConfigRead, create=DesktopConfigCreate, update=DesktopConfigUpdate,
    parents={"project_id": Project}, filters={"project_id": UUID, "name": str},
    service=DesktopConfigService, write_path="fast",
)


# --- desktop_virtual_machine ----------------------------------------------------------

VmStatus = Literal["provisioning", "running", "stopped", "terminated", "failed"]
# Must equal the moves of policies/desktop_virtual_machine.sql (a test compares them).
VM_LIFECYCLE = lifecycle("VM", "provisioning", {
    "provisioning": "running failed",
    "running": "stopped terminated",
    "stopped": "running terminated",
}, table="desktop_virtual_machine")
VM_DELETABLE = {"terminated", "failed"}
Host = Annotated[str, Meta(min_length=1, max_length=255)]
IpAddress = Annotated[str, Meta(min_length=1, max_length=64)]


class DesktopVmRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    config_id: UUID
    name: str
    status: str
    host: str | None
    ip_address: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class DesktopVmCreate(Input):
    """A VM starts ``provisioning``; its project is its config's."""

    config_id: UUID
    name: Name
    host: Host | None = None
    ip_address: IpAddress | None = None


DesktopVmUpdate = update_of(DesktopVmCreate, exclude=("config_id",), extra={"status": VmStatus})


class DesktopVirtualMachineService(TenantService[DesktopVirtualMachine]):
    async def before_write(self, values: dict[str, Any], existing: DesktopVirtualMachine | None) -> dict[str, Any]:
        if existing is None:  # check_parents has shown the config is visible
            config = await self.repository.session.scalar(
                select(DesktopConfig).where(DesktopConfig.organization_id == self.org,
                                            DesktopConfig.id == values["config_id"])
            )
            assert config is not None
            values["project_id"] = config.project_id
        if values.get("ip_address") is not None:
            try:
                values["ip_address"] = str(ipaddress.ip_address(values["ip_address"]))
            except ValueError:
                raise invalid("ip_address", "not an IPv4 or IPv6 address") from None
        if existing is not None and "status" in values:
            VM_LIFECYCLE.check(existing.status, values["status"])
        return values

    async def delete_row(self, item_id: UUID, scope: dict[str, Any] | None = None) -> None:
        # A running machine's record must not vanish: terminate it first.
        row = await self.get_visible(item_id, scope)
        if row.status not in VM_DELETABLE:
            raise conflict(f"cannot delete a VM that is {row.status}; terminate it first", status=row.status)
        await self.repository.session.delete(row)
        await self.repository.session.flush()


desktop_vms = Resource(
    name="desktop_vm", path="/v1/desktop-vms", model=DesktopVirtualMachine, area="desktops",
    read=DesktopVmRead, create=DesktopVmCreate, update=DesktopVmUpdate,
    parents={"config_id": DesktopConfig},
    filters={"project_id": UUID, "config_id": UUID, "status": VmStatus},
    service=DesktopVirtualMachineService,
)
vm_service = desktop_vms.service_class()


def _vm_action(action: str, target: str) -> Any:
    """POST /v1/desktop-vms/{vm_id}/<action>: the same state machine as PATCH status."""

    async def handler(db: AsyncSession, ctx: Principal, vm_id: UUID) -> DesktopVmRead:
        return to_read(DesktopVmRead, await vm_service(db, ctx).update_row(vm_id, {"status": target}))

    handler.__name__ = f"{action}_desktop_vm"
    return post(f"/{{vm_id:uuid}}/{action}", opt={"scope": "desktops:write"}, operation_id=f"{action}_desktop_vm",
                summary=f"{action.capitalize()} a VM (status → {target})", tags=["desktops"], status_code=200)(handler)


desktop_vms.actions.extend([_vm_action("start", "running"), _vm_action("stop", "stopped"),
                            _vm_action("terminate", "terminated")])


# --- robot_macro ------------------------------------------------------------------------

Action = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_.-]*$")]


class MacroStep(msgspec.Struct, forbid_unknown_fields=True):
    """One step: an action name (``click``, ``type``, ``wait``...) and its parameters."""

    action: Action
    params: dict[str, Any] = msgspec.field(default_factory=dict)


Steps = Annotated[list[MacroStep], Meta(max_length=1000)]


class RobotMacroRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    name: str
    description: str
    steps: list[MacroStep]
    vm_id: UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


class RobotMacroCreate(Input):
    project_id: UUID
    name: Name
    description: Description = ""
    steps: Steps = msgspec.field(default_factory=list)
    vm_id: UUID | None = None


RobotMacroUpdate = update_of(RobotMacroCreate, exclude=("project_id",))


class RobotMacroService(TenantService[RobotMacro]):
    async def before_write(self, values: dict[str, Any], existing: RobotMacro | None) -> dict[str, Any]:
        if "steps" in values:
            values["steps"] = msgspec.to_builtins(values["steps"])
            check_json_size("steps", values["steps"])
        if values.get("vm_id") is not None:
            project_id = existing.project_id if existing else values["project_id"]
            await vm_in_project(self.repository.session, self.org, values["vm_id"], project_id)
        return values


robot_macros = Resource(
    name="robot_macro", path="/v1/robot-macros", model=RobotMacro, area="desktops",
    read=RobotMacroRead, create=RobotMacroCreate, update=RobotMacroUpdate,
    parents={"project_id": Project, "vm_id": DesktopVirtualMachine},
    filters={"project_id": UUID, "vm_id": UUID, "name": str},
    service=RobotMacroService,
)


# --- robot_macro_execution --------------------------------------------------------------

ExecutionStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# Must equal the moves of policies/robot_macro_execution.sql (a test compares them).
EXECUTION_LIFECYCLE = lifecycle("execution", "queued", RUN_MOVES, table="robot_macro_execution")


class RobotMacroExecutionRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    macro_id: UUID
    vm_id: UUID | None
    status: str
    exit_code: int | None
    error: str | None
    attempt: int
    """How many times a robot has claimed it (the current or last run)."""
    max_attempts: int
    lease_expires_at: dt.datetime | None
    claimed_by_token_id: UUID | None
    progress: dict[str, Any] | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration_ms: int | None
    output: Any
    created_at: dt.datetime
    updated_at: dt.datetime


class RobotMacroExecutionCreate(Input):
    """Queues an execution on ``vm_id`` (default: the macro's VM), which must be running;
    the robot of that VM claims it (POST /v1/robot-macro-executions/claim) and runs it."""

    vm_id: UUID | None = None
    max_attempts: MaxAttempts = 3


RobotMacroExecutionUpdate = update_of(
    RobotMacroExecutionCreate, keep=(), extra={"status": CancelStatus},
    doc="""Cancel an execution (a robot running it finds out at its next heartbeat). Running,
    progress, output and the outcome are the robot's (docs/runners.md).""")


class RobotMacroExecutionService(TenantService[RobotMacroExecution]):
    newest_first = True

    async def before_write(self, values: dict[str, Any], existing: RobotMacroExecution | None) -> dict[str, Any]:
        db = self.repository.session
        if existing is None:
            macro = await db.scalar(
                select(RobotMacro).where(RobotMacro.organization_id == self.org, RobotMacro.id == values["macro_id"])
            )
            assert macro is not None  # the nested route has shown it
            vm_id = values.get("vm_id") or macro.vm_id
            if vm_id is None:
                raise invalid("vm_id", "required: the macro is not bound to a VM")
            vm = await vm_in_project(db, self.org, vm_id, macro.project_id)
            if vm.status != "running":
                raise conflict(f"the VM is {vm.status}; start it first", vm_status=vm.status)
            return {**values, "vm_id": vm_id}
        if "status" in values:
            # Read under the row lock (update_row took it: locks_for), so two concurrent
            # moves are judged one after the other.
            current = existing.status if existing.id in self.locked else await self.lock_status(existing.id)
            EXECUTION_LIFECYCLE.check(current, values["status"])
        return release_claim(values)

    def locks_for(self, values: dict[str, Any]) -> bool:
        return "status" in values


robot_macro_executions = Resource(
    name="robot_macro_execution", path="/v1/robot-macros/{macro_id:uuid}/executions",
    model=RobotMacroExecution, area="desktops",
    read=RobotMacroExecutionRead, create=RobotMacroExecutionCreate, update=RobotMacroExecutionUpdate,
    parents={"vm_id": DesktopVirtualMachine}, filters={"status": ExecutionStatus},
    service=RobotMacroExecutionService, deletable=False,
    nest=Nest(param="macro_id", model=RobotMacro, column="macro_id", inherit=("project_id",), label="robot macro"),
    read_path="orm",  # newest first
)


ROUTES = Routes(resources=[desktop_configs, desktop_vms, robot_macros, robot_macro_executions])
