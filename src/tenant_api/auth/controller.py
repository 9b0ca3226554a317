"""/v1/auth (signup, verify, login, logout), /v1/me, /v1/me/organizations and
/v1/me/verification."""

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

from tenant_api.scopes import Scope
from tenant_api.auth.request import provide_public_db
from tenant_api.scopes import PROJECT_ROLE_SCOPES, ROLE_SCOPES, expand
from tenant_api.auth.verification import SessionOut, open_session, verification_mail
from tenant_api.db.context import Principal
from tenant_api.db.models import PlatformToken, UserAccount
from tenant_api.errors import ProblemError, conflict, invalid, not_found
from tenant_api.auth import mail_secrets
from tenant_api.ops.ratelimit import SECRET_CHECKING_ROUTE
from tenant_api.inputs import Input
from tenant_api.routing import Routes

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
    email_verified: bool = False
    email_hold_until: dt.datetime | None = None
    """Unverified: the address is this account's until then; verify it before."""


class SignupOut(msgspec.Struct):
    user: UserRead
    organization_id: UUID
    workspace_id: UUID
    project_id: UUID
    session: SessionOut
    """A session in the new organization: signed up is signed in."""


class VerifyIn(Input):
    token: Annotated[str, Meta(min_length=1, max_length=200)]
    """The secret of the verification mail's link (tver_...)."""


class VerifyOut(msgspec.Struct):
    user_id: UUID
    email_verified: bool
    session: SessionOut | None
    """A session in the user's first organization (None if they can enter none)."""


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
    scopes: list[str] | None = None
    """As granted when the token was made (None: a session, the role's scopes)."""
    project_ids: list[UUID] | None = None
    """As granted (None: not restricted by the token itself)."""


class MeOut(msgspec.Struct):
    user: UserRead
    principal: str
    """user, or service_account (an organization's own identity for integrations)."""
    organization_id: UUID
    role: str
    """The user's role in the organization (project:<role> for a member of projects only).
    What this credential may do is ``scopes`` and ``project_ids``, never more."""
    scopes: list[Scope]
    """The credential's effective scopes now: its own, within what the role allows."""
    project_ids: list[UUID] | None
    """The effective project restriction (None: every project)."""
    narrowed: bool
    """True when the credential carries less than the role: fewer scopes, or a project
    restriction of the token's own. A narrowed owner's token is not an owner."""
    token: TokenInUse


class ProjectPlace(msgspec.Struct):
    id: UUID
    name: str
    role: str


class OrganizationPlace(msgspec.Struct):
    organization_id: UUID
    name: str
    role: str | None
    """The organization role; None for a member of some projects only (see projects)."""
    projects: list[ProjectPlace] | None
    current: bool
    """The organization of the credential in use."""


class OrganizationPlaces(msgspec.Struct):
    items: list[OrganizationPlace]


class VerificationSent(msgspec.Struct):
    status: str
    email: str
    email_hold_until: dt.datetime | None


@post("/signup", opt={**SECRET_CHECKING_ROUTE, "problems": (409,)}, dependencies={"db": Provide(provide_public_db)},
      operation_id="signup", tags=["auth"],
      summary="Sign up: an account, its organization, a session; a verification mail is sent")
async def signup(db: AsyncSession, data: SignupIn, request: Request, state: State) -> SignupOut:
    email = data.email.strip()
    if not _EMAIL.match(email):
        raise invalid("email", "not an email address")
    password_hash = await state.passwords.hash(data.password)
    request_id = request.scope["state"].get("request_id")
    hold = dt.timedelta(hours=state.settings.auth.email_hold_hours)
    mail = verification_mail(state.settings.auth.jwt_secret, email,
                             await db.scalar(text("select now() + :hold"), {"hold": hold}))
    try:
        row = (
            await db.execute(
                text("select * from auth.signup(:email, :hash, :name, :rid, :hold, :vhash, :nonce, :subject, :body)"),
                {"email": email, "hash": password_hash, "name": data.display_name, "rid": request_id,
                 "hold": hold, "vhash": mail.secret_hash, "nonce": mail.nonce, "subject": mail.subject,
                 "body": mail.body},
            )
        ).one()
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == "23505":
            raise conflict("an account with this email already exists: log in. (An account that never verified "
                           "its address holds it only for a while after its sign-up; then signing up claims it.)"
                           ) from None
        raise
    session = await open_session(db, state, row.user_id, row.organization_id, request_id)
    assert session is not None  # the owner of the organization just made
    return SignupOut(
        user=UserRead(id=row.user_id, email=email, display_name=data.display_name, email_verified=False,
                      email_hold_until=row.email_hold_until),
        organization_id=row.organization_id, workspace_id=row.workspace_id, project_id=row.project_id,
        session=session,
    )


@post("/verify", opt={**SECRET_CHECKING_ROUTE, "problems": (404,)}, dependencies={"db": Provide(provide_public_db)},
      operation_id="verify_email",
      tags=["auth"], status_code=200, summary="Verify the email address with the mailed secret; returns a session")
async def verify_email(db: AsyncSession, data: VerifyIn, request: Request, state: State) -> VerifyOut:
    try:
        digest = mail_secrets.invite_hash(data.token.strip(), mail_secrets.VERIFY_PREFIX)
    except mail_secrets.MalformedInvite:
        raise invalid("token", "not a verification token") from None
    request_id = request.scope["state"].get("request_id")
    row = (await db.execute(text("select * from auth.verify_email(:hash, :rid)"),
                            {"hash": digest, "rid": request_id})).one()
    if row.status != "ok":
        raise not_found("verification (already used, replaced by a newer mail, or the address was claimed)")
    session = await open_session(db, state, row.user_id, None, request_id)
    return VerifyOut(user_id=row.user_id, email_verified=True, session=session)


@post("/login", opt={**SECRET_CHECKING_ROUTE, "problems": (401, 403)}, dependencies={"db": Provide(provide_public_db)},
      operation_id="login", tags=["auth"], status_code=200)
async def login(db: AsyncSession, data: LoginIn, state: State, request: Request) -> LoginOut:
    # An account that failed too often is refused before any password work (429).
    await state.failed_logins.check(data.email)
    found = (await db.execute(text("select * from auth.login_lookup(:email)"), {"email": data.email.strip()})).first()
    # The lookup's transaction ends here, and its connection goes back to the pool: a login
    # waiting for its turn at password work (auth.passwords) must not hold a connection
    # other tenants' requests need. The session begins again below.
    await db.commit()
    # Same answer, and the same argon2 work, for an unknown email and a wrong password.
    if not await state.passwords.verify(found.password_hash if found else None, data.password) or found is None:
        await state.failed_logins.failed(data.email)
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


@get("/me", opt={"scope": None}, operation_id="me", tags=["auth"],
     summary="Who the credential acts as: user, role, and the credential's effective scopes and projects")
async def me(db: AsyncSession, ctx: Principal) -> MeOut:
    user = (await db.execute(select(UserAccount).where(UserAccount.id == ctx.user_id))).scalar_one()
    token = (await db.execute(select(PlatformToken.scopes, PlatformToken.project_ids).where(
        PlatformToken.organization_id == ctx.organization_id, PlatformToken.id == ctx.token_id))).one()
    assert ctx.organization_id and ctx.token_id and ctx.kind and ctx.role and ctx.expires_at
    role_scopes = (PROJECT_ROLE_SCOPES.get(ctx.role.removeprefix("project:"), frozenset())
                   if ctx.role.startswith("project:") else ROLE_SCOPES.get(ctx.role, frozenset()))
    return MeOut(
        user=_user_read(user),
        principal="service_account" if user.kind == "service" else "user",
        organization_id=ctx.organization_id,
        role=ctx.role,
        scopes=[Scope(s) for s in sorted(ctx.scopes)],
        project_ids=list(ctx.project_ids) if ctx.project_ids is not None else None,
        narrowed=set(ctx.scopes) != expand(role_scopes) or token.project_ids is not None,
        token=TokenInUse(id=ctx.token_id, kind=ctx.kind, prefix=ctx.prefix or "", expires_at=ctx.expires_at,
                         scopes=token.scopes, project_ids=token.project_ids),
    )


def _user_read(user: UserAccount) -> UserRead:
    return UserRead(id=user.id, email=user.email, display_name=user.display_name,
                    email_verified=user.email_verified_at is not None, email_hold_until=user.email_hold_until)


@get("/me/organizations", opt={"scope": None}, operation_id="my_organizations", tags=["auth"],
     summary="Where you can enter: your organizations, and the projects of project-only memberships")
async def my_organizations(db: AsyncSession, ctx: Principal) -> OrganizationPlaces:
    rows = (await db.execute(text("select * from auth.my_organizations(:uid)"), {"uid": ctx.user_id})).all()
    return OrganizationPlaces(items=[
        OrganizationPlace(organization_id=r.organization_id, name=r.organization_name, role=r.role,
                          projects=[ProjectPlace(id=UUID(p["id"]), name=p["name"], role=p["role"])
                                    for p in r.projects] if r.projects is not None else None,
                          current=r.organization_id == ctx.organization_id)
        for r in rows])


@post("/me/verification", opt={"scope": None}, operation_id="resend_verification", tags=["auth"],
      status_code=202, summary="Mail a new verification link (the previous one stops working)")
async def resend_verification(db: AsyncSession, ctx: Principal, state: State) -> VerificationSent:
    user = (await db.execute(select(UserAccount).where(UserAccount.id == ctx.user_id))).scalar_one()
    if user.email_verified_at is not None:
        raise conflict("the email address is already verified")
    mail = verification_mail(state.settings.auth.jwt_secret, user.email, user.email_hold_until)
    status = await db.scalar(text("select auth.issue_verification(:uid, :hash, :nonce, :subject, :body)"),
                             {"uid": ctx.user_id, "hash": mail.secret_hash, "nonce": mail.nonce,
                              "subject": mail.subject, "body": mail.body})
    if status == "verified":
        raise conflict("the email address is already verified")
    if status != "ok":
        raise conflict("this account no longer holds an email address to verify")
    return VerificationSent(status="sent", email=user.email, email_hold_until=user.email_hold_until)


auth_router = Router(path="/v1/auth", route_handlers=[signup, verify_email, login, logout])
me_router = Router(path="/v1", route_handlers=[me, my_organizations, resend_verification])


ROUTES = Routes(handlers=[auth_router, me_router])
