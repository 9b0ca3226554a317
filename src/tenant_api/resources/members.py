"""Members (scope area ``members``): who may enter the organization, and who only some
of its projects.

  /v1/organization/members[/{user_id}]           organization members: owner, admin, member, auditor
  /v1/projects/{project_id}/members[/{user_id}]  project members (accepted invites): admin, editor, viewer

Reading needs members:read, changing members:write. Both lists show each member's email
and display name. A change applies to the member's very next request (auth.begin_request
reads memberships at every request): a removed member's sessions and tokens are refused
with 401 ("no longer a member"), or, if they are still a member of another project
there, simply no longer see the project they were removed from (404).

Organization rules: only an unrestricted credential (not limited to some projects) may
change organization members; only an owner may make, change or remove an owner; the
last owner can be neither removed nor demoted (409). POST adds a user the caller can
see (in practice: a member of one of the organization's projects) to the organization;
their project memberships there end (the database removes them: the organization role
applies, and a stale project role must not linger beside it). Removing
someone from the organization also removes their project memberships there.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal
from uuid import UUID

import msgspec
from litestar import Router, delete, get, patch, post
from litestar.params import Parameter
from sqlalchemy import Select, select
from sqlalchemy import delete as sa_delete
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import OrganizationMembership, Project, ProjectMembership, UserAccount
from tenant_api.errors import ProblemError, conflict, invalid, not_found
from tenant_api.inputs import Input
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT, by_id
from tenant_api.routing import Routes

OrgRole = Literal["owner", "admin", "member", "auditor"]
ProjectRole = Literal["admin", "editor", "viewer"]


class MemberRead(msgspec.Struct):
    user_id: UUID
    email: str
    display_name: str
    role: str
    created_at: dt.datetime
    updated_at: dt.datetime


class MemberPage(msgspec.Struct):
    items: list[MemberRead]
    next_cursor: str | None


class OrgMemberCreate(Input):
    user_id: UUID
    role: OrgRole


class OrgMemberUpdate(Input):
    role: OrgRole


class ProjectMemberUpdate(Input):
    role: ProjectRole


Membership = type[OrganizationMembership] | type[ProjectMembership]


def _with_user(model: Membership, where: list[Any]) -> Select:
    # Service accounts are managed under /v1/service-accounts, not here.
    return (select(model, UserAccount.email, UserAccount.display_name)
            .join(UserAccount, UserAccount.id == model.user_id).where(*where, UserAccount.kind == "person"))


def _read(row: Any) -> MemberRead:
    m = row[0]
    return MemberRead(user_id=m.user_id, email=row.email, display_name=row.display_name, role=m.role,
                      created_at=m.created_at, updated_at=m.updated_at)


async def _page(db: AsyncSession, model: Membership, where: list[Any], limit: int, cursor: str | None) -> MemberPage:
    """Keyset pagination on the membership id (creation order), like the generic lists."""
    keyset = by_id(model)
    rows = (await db.execute(keyset.query(_with_user(model, where), cursor, limit))).all()
    page, next_cursor = keyset.page(rows, limit, lambda row: (row[0].id,))
    return MemberPage(items=[_read(r) for r in page], next_cursor=next_cursor)


async def _one(db: AsyncSession, model: Membership, where: list[Any], lock: bool = False) -> Any:
    stmt = _with_user(model, where)
    if lock:
        stmt = stmt.with_for_update(of=model)
    row = (await db.execute(stmt)).first()
    if row is None:
        raise not_found("member")
    return row


# --- organization members ---------------------------------------------------------


def _org_writer(ctx: Principal) -> None:
    if ctx.project_ids is not None:
        raise ProblemError(403, "a credential restricted to projects cannot change the organization's members")


def _owner_only(ctx: Principal, *roles: str) -> None:
    if "owner" in roles and ctx.role != "owner":
        raise ProblemError(403, "only an owner can make, change or remove an owner")


async def _locked_member(db: AsyncSession, ctx: Principal, user_id: UUID) -> tuple[Any, int]:
    """The member's row, locked, and the number of owners. The owners' rows are locked
    first, always in id order: two concurrent demotions of the last two owners queue
    (no deadlock) and the second sees one owner left."""
    owners = (await db.scalars(
        select(OrganizationMembership.id)
        .where(OrganizationMembership.organization_id == ctx.organization_id, OrganizationMembership.role == "owner")
        .order_by(OrganizationMembership.id)
        .with_for_update())).all()
    return await _one(db, OrganizationMembership, _org(ctx, user_id), lock=True), len(owners)


def _keep_an_owner(member: OrganizationMembership, owners: int) -> None:
    if member.role == "owner" and owners <= 1:
        raise conflict("the last owner cannot be removed or demoted: make another member owner first")


def _org(ctx: Principal, user_id: UUID) -> list[Any]:
    return [OrganizationMembership.organization_id == ctx.organization_id, OrganizationMembership.user_id == user_id]


@get("/", opt={"scope": "members:read"}, operation_id="list_organization_members", tags=["members"])
async def list_org_members(db: AsyncSession, ctx: Principal,
                           limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
                           cursor: str | None = Parameter(default=None, max_length=64)) -> MemberPage:
    return await _page(db, OrganizationMembership,
                       [OrganizationMembership.organization_id == ctx.organization_id], limit, cursor)


@get("/{user_id:uuid}", opt={"scope": "members:read"}, operation_id="get_organization_member", tags=["members"])
async def get_org_member(db: AsyncSession, ctx: Principal, user_id: UUID) -> MemberRead:
    return _read(await _one(db, OrganizationMembership, _org(ctx, user_id)))


@post("/", opt={"scope": "members:write"}, operation_id="add_organization_member", tags=["members"])
async def add_org_member(db: AsyncSession, ctx: Principal, data: OrgMemberCreate) -> MemberRead:
    _org_writer(ctx)
    _owner_only(ctx, data.role)
    if await db.scalar(select(UserAccount.id).where(UserAccount.id == data.user_id)) is None:
        raise invalid("user_id", f"no user with id {data.user_id}")
    if await db.scalar(select(OrganizationMembership.id).where(*_org(ctx, data.user_id))) is not None:
        raise conflict("already a member of the organization")
    db.add(OrganizationMembership(organization_id=ctx.organization_id, user_id=data.user_id, role=data.role))
    await db.flush()
    return _read(await _one(db, OrganizationMembership, _org(ctx, data.user_id)))


@patch("/{user_id:uuid}", opt={"scope": "members:write"}, operation_id="update_organization_member",
       tags=["members"])
async def update_org_member(db: AsyncSession, ctx: Principal, user_id: UUID, data: OrgMemberUpdate) -> MemberRead:
    _org_writer(ctx)
    row, owners = await _locked_member(db, ctx, user_id)
    member: OrganizationMembership = row[0]
    if member.role != data.role:
        _owner_only(ctx, member.role, data.role)
        _keep_an_owner(member, owners)
        member.role = data.role
        await db.flush()
        await db.refresh(member)
    return _read(row)


@delete("/{user_id:uuid}", opt={"scope": "members:write"}, operation_id="remove_organization_member",
        tags=["members"])
async def remove_org_member(db: AsyncSession, ctx: Principal, user_id: UUID) -> None:
    _org_writer(ctx)
    row, owners = await _locked_member(db, ctx, user_id)
    member: OrganizationMembership = row[0]
    _owner_only(ctx, member.role)
    _keep_an_owner(member, owners)
    await db.delete(member)
    # Removed from the organization means removed from all of it: the project
    # memberships they may also hold there go too (otherwise they would fall back to
    # those projects on their next request).
    await db.execute(sa_delete(ProjectMembership).where(ProjectMembership.organization_id == ctx.organization_id,
                                                        ProjectMembership.user_id == user_id))
    await db.flush()


organization_members_router = Router(
    path="/v1/organization/members",
    route_handlers=[list_org_members, get_org_member, add_org_member, update_org_member, remove_org_member],
)


# --- project members --------------------------------------------------------------


async def _project_scope(db: AsyncSession, ctx: Principal, project_id: UUID) -> list[Any]:
    if await db.scalar(select(Project.id).where(Project.organization_id == ctx.organization_id,
                                                Project.id == project_id)) is None:
        raise not_found("project")
    return [ProjectMembership.organization_id == ctx.organization_id, ProjectMembership.project_id == project_id]


@get("/", opt={"scope": "members:read"}, operation_id="list_project_members", tags=["members"])
async def list_project_members(db: AsyncSession, ctx: Principal, project_id: UUID,
                               limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
                               cursor: str | None = Parameter(default=None, max_length=64)) -> MemberPage:
    return await _page(db, ProjectMembership, await _project_scope(db, ctx, project_id), limit, cursor)


@get("/{user_id:uuid}", opt={"scope": "members:read"}, operation_id="get_project_member", tags=["members"])
async def get_project_member(db: AsyncSession, ctx: Principal, project_id: UUID, user_id: UUID) -> MemberRead:
    where = await _project_scope(db, ctx, project_id)
    return _read(await _one(db, ProjectMembership, [*where, ProjectMembership.user_id == user_id]))


@patch("/{user_id:uuid}", opt={"scope": "members:write"}, operation_id="update_project_member", tags=["members"])
async def update_project_member(db: AsyncSession, ctx: Principal, project_id: UUID, user_id: UUID,
                                data: ProjectMemberUpdate) -> MemberRead:
    where = await _project_scope(db, ctx, project_id)
    row = await _one(db, ProjectMembership, [*where, ProjectMembership.user_id == user_id], lock=True)
    if row[0].role != data.role:
        row[0].role = data.role
        await db.flush()
        await db.refresh(row[0])
    return _read(row)


@delete("/{user_id:uuid}", opt={"scope": "members:write"}, operation_id="remove_project_member", tags=["members"])
async def remove_project_member(db: AsyncSession, ctx: Principal, project_id: UUID, user_id: UUID) -> None:
    where = await _project_scope(db, ctx, project_id)
    await db.delete((await _one(db, ProjectMembership, [*where, ProjectMembership.user_id == user_id]))[0])
    await db.flush()


project_members_router = Router(
    path="/v1/projects/{project_id:uuid}/members",
    route_handlers=[list_project_members, get_project_member, update_project_member, remove_project_member],
)


ROUTES = Routes(handlers=[organization_members_router, project_members_router])
