"""User-defined (Knative) services (scope area ``services``).

Env values marked secret are write-only. The service keeps two columns: ``env``, the
list as returned (a secret entry is ``{"name", "secret": true}`` and comes back with
``"value": null``), and ``secret_env``, ``{name: value}`` of the secrets, which no
response includes and the audit trigger redacts. A PATCH of ``env`` replaces the list;
a secret entry sent without a value keeps its stored value, so a client can send back
the list it read. A change of image or env sets status back to pending (it needs a
redeploy) unless the same request sets status."""

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta
from sqlalchemy import select

from tenant_api.db.models import Project, Service
from tenant_api.errors import conflict, invalid
from tenant_api.inputs import Input
from tenant_api.resources.base import Resource, TenantService
from tenant_api.resources.schemas import update_of
from tenant_api.routing import Routes

Status = Literal["pending", "ready", "failed", "stopped"]
ServiceName = Annotated[str, Meta(min_length=1, max_length=63, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
                                  description="a DNS-1035 label: lowercase letters, digits, hyphens")]
Image = Annotated[str, Meta(min_length=1, max_length=500)]
EnvName = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# no NUL: impossible in a process environment, and PostgreSQL cannot store it
EnvValue = Annotated[str, Meta(max_length=32768, pattern=r"^[^\x00]*$")]


class EnvVarIn(Input):
    name: EnvName
    value: EnvValue | None = None
    """Required, except for a secret that already exists: left out, its value is kept."""
    secret: bool = False


Env = Annotated[list[EnvVarIn], Meta(max_length=200)]


class EnvVarRead(msgspec.Struct):
    name: str
    secret: bool
    value: str | None = None
    """Always null for a secret."""


class ServiceRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    name: str
    image: str
    env: list[EnvVarRead]
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime


class ServiceCreate(Input):
    project_id: UUID
    name: ServiceName
    image: Image
    env: Env = []


ServiceUpdate = update_of(ServiceCreate, exclude=("project_id",), extra={"status": Status})


class ServiceService(TenantService[Service]):
    async def before_write(self, values: dict[str, Any], existing: Service | None) -> dict[str, Any]:
        name = values.get("name")
        if name is not None and (existing is None or name != existing.name):
            project_id = existing.project_id if existing else values["project_id"]
            if await self.get_one_or_none(organization_id=self.org, project_id=project_id, name=name):
                raise conflict(f"a service named {name!r} already exists in this project", field="name")
        if "env" in values:
            values.update(await self._split_env(values["env"], existing))
        redeploy = "env" in values or ("image" in values and (existing is None or values["image"] != existing.image))
        if existing is not None and redeploy and "status" not in values:
            values["status"] = "pending"
        return values

    async def _split_env(self, env: list[EnvVarIn], existing: Service | None) -> dict[str, Any]:
        """The returned list and the secret values. Errors name the entry, never a value."""
        stored: dict[str, str] = {}
        if existing is not None and any(e.secret and e.value is None for e in env):
            stored = await self.repository.session.scalar(
                select(Service.secret_env).where(Service.organization_id == self.org, Service.id == existing.id)
            ) or {}
        listed: list[dict[str, Any]] = []
        secrets: dict[str, str] = {}
        seen: set[str] = set()
        for i, e in enumerate(env):
            if e.name in seen:
                raise invalid(f"env[{i}].name", f"{e.name} is listed more than once")
            seen.add(e.name)
            if e.secret:
                if e.value is None and e.name not in stored:
                    raise invalid(f"env[{i}].value", "required for a new secret")
                secrets[e.name] = e.value if e.value is not None else stored[e.name]
                listed.append({"name": e.name, "secret": True})
            else:
                if e.value is None:
                    raise invalid(f"env[{i}].value", "required (only an existing secret's value may be left out)")
                listed.append({"name": e.name, "value": e.value, "secret": False})
        return {"env": listed, "secret_env": secrets}


services = Resource(
    name="service", path="/v1/services", model=Service, area="services",
    read=ServiceRead, create=ServiceCreate, update=ServiceUpdate,
    parents={"project_id": Project}, filters={"project_id": UUID, "status": Status, "name": str},
    service=ServiceService,
)


ROUTES = Routes(resources=[services])
