"""The organization, its workspaces and projects (scope area ``org``)."""

import datetime as dt
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Router, get, patch
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import Organization, Project, Workspace
from tenant_api.errors import not_found
from tenant_api.inputs import Input
from tenant_api.resources.base import Resource, to_read
from tenant_api.resources.schemas import set_fields, update_of
from tenant_api.routing import Routes

Name = Annotated[str, Meta(min_length=1, max_length=200)]
Description = Annotated[str, Meta(max_length=2000)]


class OrganizationRead(msgspec.Struct):
    id: UUID
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime


class OrganizationUpdate(Input):
    name: Name | UnsetType = UNSET


@get("/", opt={"scope": "org:read", "problems": (404,)}, operation_id="get_organization", tags=["org"])
async def get_organization(db: AsyncSession, ctx: Principal) -> OrganizationRead:
    row = await db.get(Organization, ctx.organization_id)
    if row is None:
        raise not_found("organization")
    return to_read(OrganizationRead, row)


@patch("/", opt={"scope": "org:write", "problems": (404,)}, operation_id="update_organization", tags=["org"])
async def update_organization(db: AsyncSession, ctx: Principal, data: OrganizationUpdate) -> OrganizationRead:
    row = await db.get(Organization, ctx.organization_id)
    if row is None:
        raise not_found("organization")
    for key, value in set_fields(data).items():
        setattr(row, key, value)
    await db.flush()
    await db.refresh(row)
    return to_read(OrganizationRead, row)


organization_router = Router(path="/v1/organization", route_handlers=[get_organization, update_organization])


class WorkspaceRead(msgspec.Struct):
    id: UUID
    name: str
    description: str
    created_at: dt.datetime
    updated_at: dt.datetime


class WorkspaceCreate(Input):
    name: Name
    description: Description = ""


WorkspaceUpdate = update_of(WorkspaceCreate)


workspaces = Resource(
    name="workspace", path="/v1/workspaces", model=Workspace, area="org",
    read=WorkspaceRead, create=WorkspaceCreate, update=WorkspaceUpdate,
    filters={"name": str}, write_path="fast",
)


class ProjectRead(msgspec.Struct):
    id: UUID
    workspace_id: UUID
    name: str
    description: str
    created_at: dt.datetime
    updated_at: dt.datetime


class ProjectCreate(Input):
    workspace_id: UUID
    name: Name
    description: Description = ""


ProjectUpdate = update_of(ProjectCreate)


projects = Resource(
    name="project", path="/v1/projects", model=Project, area="org",
    read=ProjectRead, create=ProjectCreate, update=ProjectUpdate,
    parents={"workspace_id": Workspace}, filters={"workspace_id": UUID, "name": str}, write_path="fast",
)


ROUTES = Routes(resources=[workspaces, projects], handlers=[organization_router])
