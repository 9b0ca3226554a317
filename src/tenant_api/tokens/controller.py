"""/v1/tokens. A credential can never create a token with a scope or a project it does
not itself have: checked here for a clear 403, and again by the no_escalation policy."""

import datetime as dt
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Router, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from msgspec import Meta
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api import scopes as scope_catalog
from tenant_api.scopes import Scope
from tenant_api.auth.credentials import display_prefix, new_api_token, token_hash
from tenant_api.db.context import Principal
from tenant_api.db.models import PlatformToken, Project
from tenant_api.errors import ProblemError, conflict, invalid
from tenant_api.inputs import Timestamp
from tenant_api.inputs import Input
from tenant_api.resources.base import TenantService, service_for, to_read
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tenant_api.routing import Routes


class TokenRead(msgspec.Struct):
    id: UUID
    user_id: UUID
    kind: str
    name: str
    prefix: str
    scopes: list[Scope] | None
    project_ids: list[UUID] | None
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    created_at: dt.datetime
    created_by_token_id: UUID | None


class TokenSecret(TokenRead):
    token: str
    """The secret. Shown in this response only; store it now."""


class TokenPage(msgspec.Struct):
    items: list[TokenRead]
    next_cursor: str | None


class TokenCreate(Input):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=64)]
    project_ids: Annotated[list[UUID], Meta(max_length=1000)] | None = None
    expires_at: Timestamp | None = None


class PlatformTokenService(TenantService[PlatformToken]):
    async def issue(self, data: TokenCreate, settings_default_days: int, max_days: int) -> TokenSecret:
        ctx = self.ctx
        scopes = [str(s) for s in data.scopes]  # the Scope enum's values, as plain strings
        bad = scope_catalog.unknown(scopes)
        if bad:
            raise invalid("scopes", f"unknown scope {bad[0]!r}")
        requested = sorted(set(scopes))
        for scope in requested:
            if scope not in ctx.scopes:
                raise ProblemError(403, f"cannot grant scope {scope}: the credential in use does not have it",
                                   extra={"missing_scope": scope})
        project_ids = None
        if data.project_ids is not None:
            project_ids = sorted(set(data.project_ids))
            if ctx.project_ids is not None:
                outside = [p for p in project_ids if p not in ctx.project_ids]
                if outside:
                    raise ProblemError(403, f"cannot grant project {outside[0]}: outside the credential's projects")
            visible = set(
                await self.repository.session.scalars(
                    select(Project.id).where(Project.organization_id == self.org, Project.id.in_(project_ids))
                )
            )
            missing = [p for p in project_ids if p not in visible]
            if missing:
                raise invalid("project_ids", f"no project with id {missing[0]}")
        elif ctx.project_ids is not None:
            # A restricted credential makes restricted tokens: never wider than itself.
            project_ids = list(ctx.project_ids)

        now = await self.repository.session.scalar(select(func.now()))
        expires_at = data.expires_at or now + dt.timedelta(days=settings_default_days)
        if expires_at.tzinfo is None:
            raise invalid("expires_at", "must include a time zone")
        if expires_at <= now:
            raise invalid("expires_at", "must be in the future")
        if expires_at > now + dt.timedelta(days=max_days):
            raise invalid("expires_at", f"at most {max_days} days from now")

        secret = new_api_token()
        row = await self.create(
            {
                "organization_id": self.org,
                "user_id": ctx.user_id,
                "kind": "api",
                "name": data.name,
                "prefix": display_prefix(secret),
                "token_hash": token_hash(secret),
                "scopes": requested,
                "project_ids": project_ids,
                "expires_at": expires_at,
                "created_by_token_id": ctx.token_id,
            }
        )
        return TokenSecret(**msgspec.structs.asdict(to_read(TokenRead, row)), token=secret)

    async def revoke(self, token_id: UUID) -> None:
        row = await self.get_visible(token_id)
        # Visible is not revocable: an auditor (audit:read) sees everyone's tokens; only
        # one's own, or (members:write, unrestricted) anyone's, may be revoked (the
        # platform_token write policy says the same).
        ctx = self.ctx
        if row.user_id != ctx.user_id and not (ctx.has_scope("members:write") and ctx.project_ids is None):
            raise ProblemError(403, "cannot revoke another user's token", extra={"missing_scope": "members:write"})
        if row.revoked_at is None:
            row.revoked_at = await self.repository.session.scalar(select(func.now()))
            await self.repository.session.flush()

    async def rotate(self, token_id: UUID) -> TokenSecret:
        row = await self.get_visible(token_id)
        if row.kind != "api":
            raise conflict("only API tokens can be rotated; log in again for a new session")
        if row.revoked_at is not None:
            raise conflict("token is revoked")
        # Rotation hands the caller a working secret for this row: the same rule as
        # creating it. Only one's own tokens, with no scope or project beyond the
        # credential in use (else a tokens:write token could mint a wider one, and an
        # admin could take over another user's token).
        ctx = self.ctx
        if row.user_id != ctx.user_id:
            raise ProblemError(403, "cannot rotate another user's token")
        for scope in sorted(row.scopes or ()):
            if scope not in ctx.scopes:
                raise ProblemError(403, f"cannot rotate a token with scope {scope}: the credential in use does not"
                                   " have it", extra={"missing_scope": scope})
        if ctx.project_ids is not None and (
            row.project_ids is None or not set(row.project_ids) <= set(ctx.project_ids)
        ):
            raise ProblemError(403, "cannot rotate a token with projects outside the credential's projects")
        secret = new_api_token()
        row.token_hash = token_hash(secret)
        row.prefix = display_prefix(secret)
        await self.repository.session.flush()
        return TokenSecret(**msgspec.structs.asdict(to_read(TokenRead, row)), token=secret)


token_service = service_for(PlatformToken, "token", {}, PlatformTokenService)


async def provide_tokens(db: AsyncSession, ctx: Principal) -> PlatformTokenService:
    return token_service(db, ctx)  # type: ignore[return-value]  # service_for() subclasses PlatformTokenService


@post("/", opt={"scope": "tokens:write"}, operation_id="create_token", tags=["tokens"])
async def create_token(tokens: PlatformTokenService, data: TokenCreate, state: State) -> TokenSecret:
    auth = state.settings.auth
    return await tokens.issue(data, auth.token_default_ttl_days, auth.token_max_ttl_days)


@get("/", opt={"scope": "tokens:read"}, operation_id="list_tokens", tags=["tokens"])
async def list_tokens(
    tokens: PlatformTokenService,
    limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Parameter(default=None, max_length=64),
    kind: Literal["api", "session"] | None = None,
    user_id: UUID | None = None,
) -> TokenPage:
    rows, next_cursor = await tokens.page(limit=limit, cursor=cursor, kind=kind, user_id=user_id)
    return TokenPage(items=[to_read(TokenRead, r) for r in rows], next_cursor=next_cursor)


@get("/{token_id:uuid}", opt={"scope": "tokens:read"}, operation_id="get_token", tags=["tokens"])
async def get_token(tokens: PlatformTokenService, token_id: UUID) -> TokenRead:
    return to_read(TokenRead, await tokens.get_visible(token_id))


@delete("/{token_id:uuid}", opt={"scope": "tokens:write"}, operation_id="revoke_token", tags=["tokens"])
async def revoke_token(tokens: PlatformTokenService, token_id: UUID) -> None:
    await tokens.revoke(token_id)


@post("/{token_id:uuid}/rotate", opt={"scope": "tokens:write"}, operation_id="rotate_token", tags=["tokens"],
      status_code=200)
async def rotate_token(tokens: PlatformTokenService, token_id: UUID) -> TokenSecret:
    return await tokens.rotate(token_id)


tokens_router = Router(
    path="/v1/tokens",
    route_handlers=[create_token, list_tokens, get_token, revoke_token, rotate_token],
    dependencies={"tokens": Provide(provide_tokens)},
)


ROUTES = Routes(handlers=[tokens_router])
