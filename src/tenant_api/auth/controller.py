"""/v1/auth (signup, login, logout) and /v1/me."""

import datetime as dt
import re
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Request, Router, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException
from msgspec import Meta
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.scopes import Scope
from tenant_api.auth.passwords import hash_password, verify_password
from tenant_api.auth.request import provide_public_db
from tenant_api.db.context import Principal
from tenant_api.db.models import PlatformToken, UserAccount
from tenant_api.errors import ProblemError, conflict, invalid
from tenant_api.resources.base import Input

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")

Password = Annotated[str, Meta(min_length=10, max_length=256)]


class SignupIn(Input):
    email: Annotated[str, Meta(min_length=3, max_length=320)]
    password: Password
    display_name: Annotated[str, Meta(min_length=1, max_length=200)]


class UserRead(msgspec.Struct):
    id: UUID
    email: str
    display_name: str


class SignupOut(msgspec.Struct):
    user: UserRead
    organization_id: UUID
    workspace_id: UUID
    project_id: UUID


class LoginIn(Input):
    email: Annotated[str, Meta(min_length=1, max_length=320)]
    password: Annotated[str, Meta(min_length=1, max_length=256)]
    organization_id: UUID | None = None
    project_ids: Annotated[list[UUID], Meta(min_length=1, max_length=1000)] | None = None
    """Restrict the session to these projects (each must be one the user may enter)."""


class LoginOut(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    organization_id: UUID


class TokenInUse(msgspec.Struct):
    id: UUID
    kind: str
    prefix: str
    expires_at: dt.datetime


class MeOut(msgspec.Struct):
    user: UserRead
    organization_id: UUID
    role: str
    scopes: list[Scope]
    project_ids: list[UUID] | None
    token: TokenInUse


PUBLIC = {"public": True}
# Signup and login check passwords: counted per client address with the "auth" quota
# (AUTH_RATE_PER_MINUTE, tenant_api.ops.ratelimit), so guessing and mass signups get 429.
PASSWORD_ROUTE = {**PUBLIC, "rate_limit": "auth"}


@post("/signup", opt={**PASSWORD_ROUTE, "problems": (409,)}, dependencies={"db": Provide(provide_public_db)},
      operation_id="signup", tags=["auth"])
async def signup(db: AsyncSession, data: SignupIn, request: Request) -> SignupOut:
    email = data.email.strip()
    if not _EMAIL.match(email):
        raise invalid("email", "not an email address")
    password_hash = await hash_password(data.password)
    try:
        row = (
            await db.execute(
                text("select * from auth.signup(:email, :hash, :name, :rid)"),
                {"email": email, "hash": password_hash, "name": data.display_name,
                 "rid": request.scope["state"].get("request_id")},
            )
        ).one()
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == "23505":
            raise conflict("an account with this email already exists") from None
        raise
    return SignupOut(
        user=UserRead(id=row.user_id, email=email, display_name=data.display_name),
        organization_id=row.organization_id, workspace_id=row.workspace_id, project_id=row.project_id,
    )


@post("/login", opt={**PASSWORD_ROUTE, "problems": (401, 403)}, dependencies={"db": Provide(provide_public_db)},
      operation_id="login", tags=["auth"], status_code=200)
async def login(db: AsyncSession, data: LoginIn, state: State, request: Request) -> LoginOut:
    found = (await db.execute(text("select * from auth.login_lookup(:email)"), {"email": data.email.strip()})).first()
    # Same answer, and the same argon2 work, for an unknown email and a wrong password.
    if not await verify_password(found.password_hash if found else None, data.password) or found is None:
        raise NotAuthorizedException("invalid email or password")
    ttl = dt.timedelta(seconds=state.settings.auth.session_ttl_seconds)
    session = (
        await db.execute(
            text("select * from auth.create_session(:uid, :org, :ttl, :rid, :projects)"),
            {"uid": found.user_id, "org": data.organization_id, "ttl": ttl,
             "rid": request.scope["state"].get("request_id"), "projects": data.project_ids},
        )
    ).first()
    if session is None:
        raise ProblemError(403, "not a member of that organization" if data.project_ids is None
                           else "not a member of that organization, or not of all those projects")
    token = state.codec.issue(session_id=session.token_id, organization_id=session.organization_id,
                              user_id=found.user_id, expires_at=session.expires_at)
    return LoginOut(access_token=token, token_type="bearer",  # noqa: S106 - the OAuth token type, not a secret
                    expires_in=int(ttl.total_seconds()), organization_id=session.organization_id)


@post("/logout", opt={"scope": None}, operation_id="logout", tags=["auth"], status_code=204)
async def logout(db: AsyncSession, ctx: Principal) -> None:
    """Revoke the credential in use (a session, or an API token revoking itself)."""
    await db.execute(
        update(PlatformToken)
        .where(PlatformToken.organization_id == ctx.organization_id, PlatformToken.id == ctx.token_id)
        .values(revoked_at=text("now()"))
    )


@get("/me", opt={"scope": None}, operation_id="me", tags=["auth"])
async def me(db: AsyncSession, ctx: Principal) -> MeOut:
    user = (await db.execute(
        select(UserAccount.id, UserAccount.email, UserAccount.display_name).where(UserAccount.id == ctx.user_id)
    )).one()
    assert ctx.organization_id and ctx.token_id and ctx.kind and ctx.role and ctx.expires_at
    return MeOut(
        user=UserRead(id=user.id, email=user.email, display_name=user.display_name),
        organization_id=ctx.organization_id,
        role=ctx.role,
        scopes=[Scope(s) for s in sorted(ctx.scopes)],
        project_ids=list(ctx.project_ids) if ctx.project_ids is not None else None,
        token=TokenInUse(id=ctx.token_id, kind=ctx.kind, prefix=ctx.prefix or "", expires_at=ctx.expires_at),
    )



auth_router = Router(path="/v1/auth", route_handlers=[signup, login, logout])
me_router = Router(path="/v1", route_handlers=[me])
