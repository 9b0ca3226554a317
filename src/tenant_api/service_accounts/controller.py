"""/v1/service-accounts: identities that belong to the organization, not to a person.

  /v1/service-accounts                    list (members:read), create (members:write)
  /v1/service-accounts/{id}               get, PATCH (name, description, role), DELETE
  /v1/service-accounts/{id}/tokens        its API tokens: list (members:read), mint (members:write)

A service account is a user_account of kind service (no password: it never logs in)
with an organization membership, so auth.begin_request treats its tokens like anyone's:
its role is read at every request, its tokens' scopes never exceed it, the audit trail
names its user and token. Nobody's departure touches it. ``scopes`` and ``project_ids``
(the most its tokens may carry, and the projects they are restricted to) are fixed at
creation; the role can change. Deleting it revokes every token at once and removes its
membership (a token still held is refused with 401 from the next request on).

Only unrestricted credentials with members:write (organization owners and admins)
manage them, and never as owner: an owner is a person. A token minted for one carries
no scope the minting credential lacks (the no_escalation policy checks this too).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Router, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from msgspec import Meta
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.credentials import display_prefix, new_api_token, token_hash
from tenant_api.scopes import ROLE_SCOPES, expand, unknown
from tenant_api.db.context import Principal
from tenant_api.db.models import OrganizationMembership, PlatformToken, Project, ServiceAccount
from tenant_api.errors import ProblemError, invalid, not_found
from tenant_api.inputs import Timestamp
from tenant_api.inputs import Input
from tenant_api.resources.base import to_read
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT, by_id
from tenant_api.tokens.controller import TokenPage, TokenRead, TokenSecret
from tenant_api.routing import Routes

ServiceRole = Literal["admin", "member", "auditor"]


class ServiceAccountRead(msgspec.Struct):
    id: UUID
    user_id: UUID
    """The identity its tokens act as (token_usage, audit rows, created_by fields)."""
    name: str
    description: str
    role: str
    scopes: list[str] | None
    """The most its tokens may carry (None: the role's scopes)."""
    project_ids: list[UUID] | None
    """Its tokens are restricted to these projects (None: every project)."""
    created_by_user_id: UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ServiceAccountPage(msgspec.Struct):
    items: list[ServiceAccountRead]
    next_cursor: str | None


class ServiceAccountCreate(Input):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    role: ServiceRole
    description: Annotated[str, Meta(max_length=2000)] = ""
    scopes: Annotated[list[str], Meta(min_length=1, max_length=64)] | None = None
    project_ids: Annotated[list[UUID], Meta(min_length=1, max_length=1000)] | None = None


class ServiceAccountUpdate(Input):
    name: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    description: Annotated[str, Meta(max_length=2000)] | None = None
    role: ServiceRole | None = None


class ServiceTokenCreate(Input):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    scopes: Annotated[list[str], Meta(min_length=1, max_length=64)] | None = None
    """Default: every scope the service account may carry that the caller has."""
    project_ids: Annotated[list[UUID], Meta(min_length=1, max_length=1000)] | None = None
    expires_at: Timestamp | None = None


def _admin(ctx: Principal) -> None:
    if ctx.project_ids is not None:
        raise ProblemError(403, "a credential restricted to projects cannot manage service accounts")


class ServiceAccountService:
    def __init__(self, db: AsyncSession, ctx: Principal) -> None:
        self.db = db
        self.ctx = ctx
        assert ctx.organization_id is not None
        self.org: UUID = ctx.organization_id

    def _query(self) -> Any:
        return (select(ServiceAccount, OrganizationMembership.role)
                .join(OrganizationMembership, (OrganizationMembership.organization_id == ServiceAccount.organization_id)
                      & (OrganizationMembership.user_id == ServiceAccount.user_id))
                .where(ServiceAccount.organization_id == self.org))

    @staticmethod
    def _read(row: Any) -> ServiceAccountRead:
        sa, role = row
        return ServiceAccountRead(**{**msgspec.structs.asdict(to_read(_Base, sa)), "role": role})

    async def one(self, sa_id: UUID, lock: bool = False) -> Any:
        query = self._query().where(ServiceAccount.id == sa_id)
        if lock:
            query = query.with_for_update(of=ServiceAccount)
        row = (await self.db.execute(query)).first()
        if row is None:
            raise not_found("service account")
        return row

    async def page(self, limit: int, cursor: str | None) -> ServiceAccountPage:
        keyset = by_id(ServiceAccount)
        rows = (await self.db.execute(keyset.query(self._query(), cursor, limit))).all()
        page, next_cursor = keyset.page(rows, limit, lambda row: (row[0].id,))
        return ServiceAccountPage(items=[self._read(r) for r in page], next_cursor=next_cursor)

    async def _projects(self, field: str, project_ids: list[UUID], within: list[UUID] | None) -> list[UUID]:
        wanted = sorted(set(project_ids))
        outside = [p for p in wanted if within is not None and p not in within]
        if outside:
            raise ProblemError(403, f"cannot grant project {outside[0]}: outside the service account's projects")
        visible = set(await self.db.scalars(
            select(Project.id).where(Project.organization_id == self.org, Project.id.in_(wanted))))
        missing = [p for p in wanted if p not in visible]
        if missing:
            raise invalid(field, f"no project with id {missing[0]}")
        return wanted

    async def create(self, data: ServiceAccountCreate) -> ServiceAccountRead:
        _admin(self.ctx)
        role_scopes = expand(ROLE_SCOPES[data.role])
        scopes = None
        if data.scopes is not None:
            if bad := unknown(data.scopes):
                raise invalid("scopes", f"unknown scope {bad[0]!r}")
            beyond = sorted(s for s in expand(data.scopes) if s not in role_scopes)
            if beyond:
                raise invalid("scopes", f"{beyond[0]} is beyond the role {data.role}")
            scopes = sorted(expand(data.scopes))  # stored expanded: tokens may ask for the implied reads
        project_ids = await self._projects("project_ids", data.project_ids, None) if data.project_ids else None
        user_id = await self.db.scalar(text("select auth.create_service_user(:name)"), {"name": data.name})
        self.db.add(OrganizationMembership(organization_id=self.org, user_id=user_id, role=data.role))
        sa = ServiceAccount(organization_id=self.org, user_id=user_id, name=data.name, description=data.description,
                            scopes=scopes, project_ids=project_ids, created_by_user_id=self.ctx.user_id)
        self.db.add(sa)
        await self.db.flush()
        return self._read(await self.one(sa.id))

    async def update(self, sa_id: UUID, data: ServiceAccountUpdate) -> ServiceAccountRead:
        _admin(self.ctx)
        sa, role = await self.one(sa_id, lock=True)
        if data.name is not None:
            sa.name = data.name
        if data.description is not None:
            sa.description = data.description
        if data.role is not None and data.role != role:
            await self.db.execute(update(OrganizationMembership)
                                  .where(OrganizationMembership.organization_id == self.org,
                                         OrganizationMembership.user_id == sa.user_id)
                                  .values(role=data.role))
        await self.db.flush()
        self.db.expire(sa)
        return self._read(await self.one(sa_id))

    async def delete(self, sa_id: UUID) -> None:
        _admin(self.ctx)
        sa, _ = await self.one(sa_id, lock=True)
        now = await self.db.scalar(select(func.now()))
        await self.db.execute(update(PlatformToken)
                              .where(PlatformToken.organization_id == self.org, PlatformToken.user_id == sa.user_id,
                                     PlatformToken.revoked_at.is_(None))
                              .values(revoked_at=now))
        membership = await self.db.scalar(select(OrganizationMembership).where(
            OrganizationMembership.organization_id == self.org, OrganizationMembership.user_id == sa.user_id))
        if membership is not None:
            await self.db.delete(membership)
        await self.db.delete(sa)
        await self.db.flush()

    async def tokens(self, sa_id: UUID, limit: int, cursor: str | None) -> TokenPage:
        sa, _ = await self.one(sa_id)
        where = [PlatformToken.organization_id == self.org, PlatformToken.user_id == sa.user_id]
        keyset = by_id(PlatformToken)
        rows, next_cursor = keyset.page((await self.db.scalars(
            keyset.query(select(PlatformToken).where(*where), cursor, limit))).all(), limit)
        return TokenPage(items=[to_read(TokenRead, r) for r in rows[:limit]], next_cursor=next_cursor)

    async def mint(self, sa_id: UUID, data: ServiceTokenCreate, default_days: int, max_days: int) -> TokenSecret:
        _admin(self.ctx)
        sa, role = await self.one(sa_id)
        allowed = set(sa.scopes) if sa.scopes is not None else set(expand(ROLE_SCOPES[role]))
        if data.scopes is None:
            requested = sorted(s for s in allowed if s in self.ctx.scopes)
            if not requested:
                raise ProblemError(403, "the credential in use has none of the service account's scopes")
        else:
            if bad := unknown(data.scopes):
                raise invalid("scopes", f"unknown scope {bad[0]!r}")
            requested = sorted(set(data.scopes))
            for scope in requested:
                if scope not in allowed:
                    raise invalid("scopes", f"{scope} is beyond what the service account may carry")
                if scope not in self.ctx.scopes:
                    raise ProblemError(403, f"cannot grant scope {scope}: the credential in use does not have it",
                                       extra={"missing_scope": scope})
        project_ids = sa.project_ids
        if data.project_ids is not None:
            project_ids = await self._projects("project_ids", data.project_ids, sa.project_ids)
        now: dt.datetime = (await self.db.execute(select(func.now()))).scalar_one()
        # A Timestamp has a time zone (inputs.decode_timestamp); only its range is ours to check.
        expires_at = data.expires_at or now + dt.timedelta(days=default_days)
        if not now < expires_at <= now + dt.timedelta(days=max_days):
            raise invalid("expires_at", f"must be in the future, at most {max_days} days from now")
        secret = new_api_token()
        row = PlatformToken(organization_id=self.org, user_id=sa.user_id, kind="api", name=data.name,
                            prefix=display_prefix(secret), token_hash=token_hash(secret), scopes=requested,
                            project_ids=project_ids, expires_at=expires_at, created_by_token_id=self.ctx.token_id)
        self.db.add(row)
        await self.db.flush()
        await self.db.refresh(row)
        return TokenSecret(**msgspec.structs.asdict(to_read(TokenRead, row)), token=secret)


class _Base(msgspec.Struct):
    id: UUID
    user_id: UUID
    name: str
    description: str
    scopes: list[str] | None
    project_ids: list[UUID] | None
    created_by_user_id: UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


async def provide_accounts(db: AsyncSession, ctx: Principal) -> ServiceAccountService:
    return ServiceAccountService(db, ctx)


TAGS = ["service accounts"]


@get("/", opt={"scope": "members:read"}, operation_id="list_service_accounts", tags=TAGS)
async def list_service_accounts(accounts: ServiceAccountService,
                                limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
                                cursor: str | None = Parameter(default=None, max_length=64)) -> ServiceAccountPage:
    return await accounts.page(limit, cursor)


@post("/", opt={"scope": "members:write"}, operation_id="create_service_account", tags=TAGS,
      summary="A principal of the organization for an integration, with a role (and optional limits)")
async def create_service_account(accounts: ServiceAccountService, data: ServiceAccountCreate) -> ServiceAccountRead:
    return await accounts.create(data)


@get("/{account_id:uuid}", opt={"scope": "members:read"}, operation_id="get_service_account", tags=TAGS)
async def get_service_account(accounts: ServiceAccountService, account_id: UUID) -> ServiceAccountRead:
    return accounts._read(await accounts.one(account_id))


@patch("/{account_id:uuid}", opt={"scope": "members:write"}, operation_id="update_service_account", tags=TAGS)
async def update_service_account(accounts: ServiceAccountService, account_id: UUID,
                                 data: ServiceAccountUpdate) -> ServiceAccountRead:
    return await accounts.update(account_id, data)


@delete("/{account_id:uuid}", opt={"scope": "members:write"}, operation_id="delete_service_account", tags=TAGS,
        summary="Delete it: its tokens stop working at once")
async def delete_service_account(accounts: ServiceAccountService, account_id: UUID) -> None:
    await accounts.delete(account_id)


@get("/{account_id:uuid}/tokens", opt={"scope": "members:read"}, operation_id="list_service_account_tokens",
     tags=TAGS)
async def list_service_account_tokens(accounts: ServiceAccountService, account_id: UUID,
                                      limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
                                      cursor: str | None = Parameter(default=None, max_length=64)) -> TokenPage:
    return await accounts.tokens(account_id, limit, cursor)


@post("/{account_id:uuid}/tokens", opt={"scope": "members:write"}, operation_id="create_service_account_token",
      tags=TAGS, summary="Mint an API token that acts as the service account (the secret is shown once)")
async def create_service_account_token(accounts: ServiceAccountService, account_id: UUID, data: ServiceTokenCreate,
                                       state: State) -> TokenSecret:
    auth = state.settings.auth
    return await accounts.mint(account_id, data, auth.token_default_ttl_days, auth.token_max_ttl_days)


service_accounts_router = Router(
    path="/v1/service-accounts",
    route_handlers=[list_service_accounts, create_service_account, get_service_account, update_service_account,
                    delete_service_account, list_service_account_tokens, create_service_account_token],
    dependencies={"accounts": Provide(provide_accounts)},
)


ROUTES = Routes(handlers=[service_accounts_router])
