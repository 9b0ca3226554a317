"""Invites, to a project or to the organization itself.

  /v1/projects/{project_id}/invites                 list (members:read), create (members:write)
  /v1/projects/{project_id}/invites/{id}            get (members:read), revoke: DELETE (members:write)
  /v1/projects/{project_id}/invites/{id}/resend     new secrets and expiry (members:write)
  /v1/organization/invites[...]                     the same for organization roles (admin, member,
                                                    auditor), unrestricted credentials only
  /v1/invites/accept, /v1/invites/decline           the invitee, with any credential of theirs
  /v1/invites/preview, /v1/invites/signup           the invite page (public: the secret is the key)

Lists and gets are the generic resource (``invites``); what is the invite's own lives
here: the secret (returned once, stored as a hash, re-derivable only by the mailer, see
auth.mail_secrets), the outbox row written in the same transaction, one open invite per
(project, email), and accepting, which runs as the invitee through auth.accept_invite.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from msgspec import Meta
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.credentials import token_hash
from tenant_api.auth.request import provide_public_db
from tenant_api.auth.verification import LINK_LINE, SessionOut, enter_as_session, open_session
from tenant_api.db.context import Principal
from tenant_api.db.models import (
    InviteOutbox,
    Organization,
    OrganizationMembership,
    Project,
    ProjectInvite,
    ProjectMembership,
    UserAccount,
)
from tenant_api.errors import ProblemError, conflict, invalid, not_found
from tenant_api.auth import mail_secrets
from tenant_api.ops.ratelimit import SECRET_CHECKING_ROUTE
from tenant_api.inputs import Input
from tenant_api.resources.base import Nest, Resource, TenantService, to_read
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT, by_id
from tenant_api.settings import InviteSettings
from tenant_api.routing import Routes

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")

InviteRole = Literal["admin", "editor", "viewer"]
OrgInviteRole = Literal["admin", "member", "auditor"]
InviteStatus = Literal["pending", "accepted", "declined", "revoked", "expired"]


class InviteRead(msgspec.Struct):
    id: UUID
    project_id: UUID | None
    """None: an invite to the organization itself."""
    email: str
    role: str
    status: str
    """pending | accepted | declined | revoked | expired, derived from the timestamps."""
    delivery_status: str | None
    """The latest mail: pending | sent | failed | cancelled."""
    expires_at: dt.datetime
    send_count: int
    invited_by_user_id: UUID | None
    accepted_at: dt.datetime | None
    accepted_by_user_id: UUID | None
    declined_at: dt.datetime | None
    revoked_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class InviteSecret(InviteRead):
    invite_token: str
    """A secret that accepts the invite, shown in this response only, for handing over
    another way. It lets an account whose address is verified accept; the mail carries a
    second secret (never shown here) that also proves the mailbox."""
    invite_url: str
    """The invite page for this secret."""


class InvitePage(msgspec.Struct):
    items: list[InviteRead]
    next_cursor: str | None


class InviteCreate(Input):
    email: Annotated[str, Meta(min_length=3, max_length=320)]
    role: InviteRole
    resend: bool = False
    """If an open invite for this email exists, resend it (new secret, expiry and this
    role) instead of refusing with 409."""


class OrgInviteCreate(Input):
    email: Annotated[str, Meta(min_length=3, max_length=320)]
    role: OrgInviteRole
    resend: bool = False
    """If an open invite for this email exists, resend it (new secrets, expiry and this
    role) instead of refusing with 409."""


class InviteAnswer(Input):
    invite_token: Annotated[str, Meta(min_length=1, max_length=200)]


class MembershipOut(msgspec.Struct):
    organization_id: UUID
    project_id: UUID | None
    """None: a membership of the organization itself."""
    membership_id: UUID
    role: str
    email_verified: bool
    """Accepting with the mail's secret verified the address (if it was not yet)."""


class InvitePreview(msgspec.Struct):
    kind: str
    """project | organization"""
    status: str
    email: str
    role: str
    organization_id: UUID
    organization_name: str
    project_id: UUID | None
    project_name: str | None
    invited_by: str | None
    expires_at: dt.datetime
    from_mail: bool
    """The secret is the mail's: it proves the mailbox (sign-up in place is possible)."""
    account: str
    """none (sign up) | verified | unverified (sign in)."""


class InviteSignup(Input):
    invite_token: Annotated[str, Meta(min_length=1, max_length=200)]
    password: Annotated[str, Meta(min_length=10, max_length=256)]
    display_name: Annotated[str, Meta(min_length=1, max_length=200)]


class InviteSignupOut(msgspec.Struct):
    user_id: UUID
    email: str
    membership: MembershipOut
    session: SessionOut
    """A session in the inviting organization."""


def _one_line(value: str) -> str:
    return " ".join(value.split())


class ProjectInviteService(TenantService[ProjectInvite]):
    """Invites to a project (``project_id``) or to the organization (``project_id`` None)."""

    async def _project(self, project_id: UUID | None) -> Project | None:
        if project_id is None:
            if self.ctx.project_ids is not None:
                raise ProblemError(403, "a credential restricted to projects cannot manage organization invites")
            return None
        project = await self.repository.session.scalar(
            select(Project).where(Project.organization_id == self.org, Project.id == project_id))
        if project is None:
            raise not_found("project")
        return project

    def _same_target(self, project_id: UUID | None) -> Any:
        return (ProjectInvite.project_id.is_(None) if project_id is None
                else ProjectInvite.project_id == project_id)

    async def _locked(self, project_id: UUID | None, invite_id: UUID) -> tuple[ProjectInvite, Project | None]:
        """The invite, locked (an accept may be racing) and freshly read, and its project."""
        project = await self._project(project_id)
        row = await self.repository.session.scalar(
            select(ProjectInvite)
            .where(ProjectInvite.organization_id == self.org, self._same_target(project_id),
                   ProjectInvite.id == invite_id)
            .with_for_update(of=ProjectInvite)
            .execution_options(populate_existing=True))
        if row is None:
            raise not_found("invite")
        return row, project

    async def get_invite(self, project_id: UUID | None, invite_id: UUID) -> InviteRead:
        await self._project(project_id)
        row = await self.repository.session.scalar(
            select(ProjectInvite).where(ProjectInvite.organization_id == self.org, self._same_target(project_id),
                                        ProjectInvite.id == invite_id))
        if row is None:
            raise not_found("invite")
        return to_read(InviteRead, row)

    async def list_invites(self, project_id: UUID | None, limit: int, cursor: str | None,
                           status: str | None) -> InvitePage:
        await self._project(project_id)
        where = [ProjectInvite.organization_id == self.org, self._same_target(project_id)]
        if status:
            where.append(ProjectInvite.status == status)
        keyset = by_id(ProjectInvite)
        rows, next_cursor = keyset.page((await self.repository.session.scalars(
            keyset.query(select(ProjectInvite).where(*where), cursor, limit))).all(), limit)
        return InvitePage(items=[to_read(InviteRead, r) for r in rows], next_cursor=next_cursor)

    async def _cancel_mail(self, row: ProjectInvite) -> None:
        """A mail not sent yet carries a link that no longer works: never send it."""
        await self.repository.session.execute(
            update(InviteOutbox)
            .where(InviteOutbox.organization_id == self.org, InviteOutbox.invite_id == row.id,
                   InviteOutbox.status == "pending")
            .values(status="cancelled"))

    async def _message(self, project: Project | None, email: str, role: str,
                       expires_at: dt.datetime) -> tuple[str, str]:
        session = self.repository.session
        inviter = await session.scalar(select(UserAccount.display_name).where(UserAccount.id == self.ctx.user_id))
        org = await session.scalar(select(Organization.name).where(Organization.id == self.org)) or "an organization"
        if project is not None:
            where = f"the project “{_one_line(project.name)}” of {_one_line(org)}"
            subject = f"Invitation to {_one_line(project.name)}"
        else:
            where = f"the organization {_one_line(org)}"
            subject = f"Invitation to {_one_line(org)}"
        body = "\n".join([
            f"{_one_line(inviter or 'Someone')} invited you to {where} as {role}.",
            "",
            f"Open this link to see the invitation, sign in or sign up as {email}, and accept or decline it:",
            LINK_LINE,
            "",
            f"The invitation expires on {expires_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC.",
            "If you did not expect it, ignore this mail.",
        ])
        return subject[:500], body

    async def _issue(self, row: ProjectInvite, project: Project | None, settings: InviteSettings,
                     keys: InviteKeys) -> InviteSecret:
        """Give the invite new secrets and expiry, and queue its mail (cancelling any
        earlier one not yet sent: its link would no longer work)."""
        session = self.repository.session
        now = await session.scalar(select(func.now()))
        nonce = mail_secrets.new_nonce()
        secret = mail_secrets.derive(keys.link, nonce)
        row.token_hash = token_hash(secret)
        row.mail_token_hash = token_hash(mail_secrets.derive(keys.mail, nonce))
        row.expires_at = now + dt.timedelta(days=settings.ttl_days)
        await session.flush()  # the invite row first: the outbox row references it
        await self._cancel_mail(row)
        subject, body = await self._message(project, row.email, row.role, row.expires_at)
        session.add(InviteOutbox(organization_id=self.org, project_id=row.project_id, invite_id=row.id, kind="invite",
                                 recipient=row.email, subject=subject, body=body, nonce=nonce))
        await session.flush()
        await session.refresh(row)
        return InviteSecret(**msgspec.structs.asdict(to_read(InviteRead, row)), invite_token=secret,
                            invite_url=invite_url(keys.base_url, secret))

    async def invite(self, project_id: UUID | None, email: str, role: str, resend: bool, settings: InviteSettings,
                     keys: InviteKeys) -> tuple[InviteSecret, bool]:
        """Returns the invite with its secret, and whether it is new (else resent)."""
        session = self.repository.session
        project = await self._project(project_id)
        email = email.strip()
        if not _EMAIL.match(email):
            raise invalid("email", "not an email address")
        if project_id is None and role == "admin" and self.ctx.role not in ("owner", "admin"):
            raise ProblemError(403, "only an owner or an admin can invite an admin")
        same_email = func.lower(UserAccount.email) == email.lower()
        if project_id is not None and await session.scalar(
            select(ProjectMembership.id).join(UserAccount, UserAccount.id == ProjectMembership.user_id)
            .where(ProjectMembership.organization_id == self.org, ProjectMembership.project_id == project_id,
                   same_email)):
            raise conflict("this email is already a member of the project")
        # Visible to organization admins only; for a project admin the accept says it.
        if await session.scalar(
            select(OrganizationMembership.id).join(UserAccount, UserAccount.id == OrganizationMembership.user_id)
            .where(OrganizationMembership.organization_id == self.org, same_email)):
            raise conflict("this email is already a member of the organization"
                           + (" (it sees every project)" if project_id is not None else ""))
        existing = await session.scalar(
            select(ProjectInvite.id).where(
                ProjectInvite.organization_id == self.org, self._same_target(project_id),
                func.lower(ProjectInvite.email) == email.lower(), ProjectInvite.accepted_at.is_(None),
                ProjectInvite.declined_at.is_(None), ProjectInvite.revoked_at.is_(None)))
        if existing is not None:
            if not resend:
                raise conflict(f"an open invite for this email exists ({existing}): resend it, or revoke it first",
                               invite_id=str(existing))
            return await self.resend(project_id, existing, settings, keys, role=role), False
        row = ProjectInvite(organization_id=self.org, project_id=project_id, email=email, role=role,
                            invited_by_user_id=self.ctx.user_id)
        session.add(row)
        return await self._issue(row, project, settings, keys), True

    async def resend(self, project_id: UUID | None, invite_id: UUID, settings: InviteSettings, keys: InviteKeys,
                     role: str | None = None) -> InviteSecret:
        row, project = await self._locked(project_id, invite_id)
        if row.status not in ("pending", "expired"):
            raise conflict(f"the invite is {row.status}: only a pending or expired invite can be resent")
        row.send_count += 1
        if role is not None:
            row.role = role
        return await self._issue(row, project, settings, keys)

    async def revoke(self, project_id: UUID | None, invite_id: UUID) -> None:
        row, _ = await self._locked(project_id, invite_id)
        if row.status == "revoked":
            return
        if row.status in ("accepted", "declined"):
            raise conflict(f"the invite is {row.status}: {row.status} → revoked is not possible"
                           + (" (remove the member instead)" if row.status == "accepted" else ""))
        session = self.repository.session
        row.revoked_at = await session.scalar(select(func.now()))
        await session.flush()
        await self._cancel_mail(row)


class InviteKeys(msgspec.Struct, frozen=True):
    link: bytes
    mail: bytes
    base_url: str


def invite_url(base_url: str, secret: str) -> str:
    """The invite page; the secret rides in the fragment, which browsers never send."""
    return f"{base_url}/invites/accept#invite_token={secret}"


def _keys(state: State) -> InviteKeys:
    secret = state.settings.auth.jwt_secret
    return InviteKeys(link=mail_secrets.link_key(secret), mail=mail_secrets.mail_key(secret),
                      base_url=state.settings.server.base_url)


# --- project invites (a generic resource for list and get) ------------------------


@post("/", opt={"scope": "members:write"}, operation_id="create_invite", summary="Invite an email to the project",
      tags=["members"])
async def create_invite(service: ProjectInviteService, project_id: UUID, data: InviteCreate,
                        state: State) -> Response[InviteSecret]:
    secret, created = await service.invite(project_id, data.email, data.role, data.resend, state.settings.invites,
                                           _keys(state))
    return Response(secret, status_code=201 if created else 200)


@post("/{item_id:uuid}/resend", opt={"scope": "members:write"}, operation_id="resend_invite",
      summary="New secrets and expiry; the old ones stop working", tags=["members"], status_code=200)
async def resend_invite(service: ProjectInviteService, project_id: UUID, item_id: UUID, state: State) -> InviteSecret:
    return await service.resend(project_id, item_id, state.settings.invites, _keys(state))


@delete("/{item_id:uuid}", opt={"scope": "members:write"}, operation_id="revoke_invite",
        summary="Revoke an invite", tags=["members"])
async def revoke_invite(service: ProjectInviteService, project_id: UUID, item_id: UUID) -> None:
    await service.revoke(project_id, item_id)


invites = Resource(
    name="invite", path="/v1/projects/{project_id:uuid}/invites", model=ProjectInvite, area="members",
    read=InviteRead, service=ProjectInviteService, deletable=False, filters={"status": InviteStatus},
    nest=Nest(param="project_id", model=Project, column="project_id", label="project"),
    actions=[create_invite, resend_invite, revoke_invite],
    read_path="orm",  # delivery_status is the outbox's, not a column
)


# --- organization invites -----------------------------------------------------------


# Built once (service_class() makes a new class per call), like the resource router's own.
invite_service = invites.service_class()


async def provide_invite_service(db: AsyncSession, ctx: Principal) -> ProjectInviteService:
    service = invite_service(db, ctx)
    assert isinstance(service, ProjectInviteService)  # invites.service is ProjectInviteService
    return service


@get("/", opt={"scope": "members:read"}, operation_id="list_organization_invites", tags=["members"],
     summary="Invites to the organization itself")
async def list_org_invites(service: ProjectInviteService,
                           limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
                           cursor: str | None = Parameter(default=None, max_length=64),
                           status: InviteStatus | None = None) -> InvitePage:
    return await service.list_invites(None, limit, cursor, status)


@get("/{invite_id:uuid}", opt={"scope": "members:read"}, operation_id="get_organization_invite", tags=["members"])
async def get_org_invite(service: ProjectInviteService, invite_id: UUID) -> InviteRead:
    return await service.get_invite(None, invite_id)


@post("/", opt={"scope": "members:write"}, operation_id="create_organization_invite", tags=["members"],
      summary="Invite an email to the organization, as admin, member or auditor")
async def create_org_invite(service: ProjectInviteService, data: OrgInviteCreate,
                            state: State) -> Response[InviteSecret]:
    secret, created = await service.invite(None, data.email, data.role, data.resend, state.settings.invites,
                                           _keys(state))
    return Response(secret, status_code=201 if created else 200)


@post("/{invite_id:uuid}/resend", opt={"scope": "members:write"}, operation_id="resend_organization_invite",
      tags=["members"], status_code=200, summary="New secrets and expiry; the old ones stop working")
async def resend_org_invite(service: ProjectInviteService, invite_id: UUID, state: State) -> InviteSecret:
    return await service.resend(None, invite_id, state.settings.invites, _keys(state))


@delete("/{invite_id:uuid}", opt={"scope": "members:write"}, operation_id="revoke_organization_invite",
        tags=["members"], summary="Revoke an organization invite")
async def revoke_org_invite(service: ProjectInviteService, invite_id: UUID) -> None:
    await service.revoke(None, invite_id)


organization_invites_router = Router(
    path="/v1/organization/invites",
    route_handlers=[list_org_invites, get_org_invite, create_org_invite, resend_org_invite, revoke_org_invite],
    dependencies={"service": Provide(provide_invite_service)},
)


# --- the invitee ----------------------------------------------------------------------

_GONE = {"expired": "the invite has expired", "revoked": "the invite was revoked",
         "used": "the invite was already used", "declined": "the invite was declined"}
_UNVERIFIED = ("your email address is not verified yet: open the link in the invite mail (it proves the "
               "address), or verify it with the link of the verification mail first")


def _digest(token: str) -> bytes:
    try:
        return mail_secrets.invite_hash(token.strip())
    except mail_secrets.MalformedInvite:
        raise invalid("invite_token", "not an invite token") from None


async def _answer(db: AsyncSession, user_id: UUID | None, token: str, decline: bool) -> Any:
    row = (await db.execute(text("select * from auth.accept_invite(:hash, :user_id, :decline)"),
                            {"hash": _digest(token), "user_id": user_id, "decline": decline})).one()
    if row.status == "not_found":
        raise not_found("invite")
    if row.status == "unverified":
        raise ProblemError(403, _UNVERIFIED, extra={"invite_status": "pending"})
    if row.status in _GONE:
        raise ProblemError(410, _GONE[row.status], extra={"invite_status": row.status})
    if row.status == "already_member":
        raise conflict("you are already a member of that organization or project")
    return row


def _membership(row: Any) -> MembershipOut:
    return MembershipOut(organization_id=row.organization_id, project_id=row.project_id,
                         membership_id=row.membership_id, role=row.role, email_verified=bool(row.verified))


@post("/accept", opt={"scope": None, "problems": (404, 409, 410)}, operation_id="accept_invite", tags=["members"],
      status_code=201,
      summary="Accept an invite addressed to your email: become a member of its project or organization")
async def accept_invite(db: AsyncSession, ctx: Principal, data: InviteAnswer) -> MembershipOut:
    return _membership(await _answer(db, ctx.user_id, data.invite_token, decline=False))


@post("/decline", opt={"scope": None, "problems": (404, 410)}, operation_id="decline_invite", tags=["members"],
      status_code=204,
      summary="Decline an invite addressed to your email")
async def decline_invite(db: AsyncSession, ctx: Principal, data: InviteAnswer) -> None:
    await _answer(db, ctx.user_id, data.invite_token, decline=True)


async def _preview(db: AsyncSession, token: str) -> Any:
    row = (await db.execute(text("select * from auth.invite_preview(:hash)"), {"hash": _digest(token)})).first()
    if row is None:
        raise not_found("invite")
    return row


@post("/preview", opt={**SECRET_CHECKING_ROUTE, "problems": (404,)}, dependencies={"db": Provide(provide_public_db)},
      operation_id="preview_invite",
      tags=["members"], status_code=200,
      summary="What an invite secret is for (the invite page): organization, project, role, inviter, state")
async def preview_invite(db: AsyncSession, data: InviteAnswer) -> InvitePreview:
    r = await _preview(db, data.invite_token)
    return InvitePreview(kind=r.kind, status=r.status, email=r.email, role=r.role, organization_id=r.organization_id,
                         organization_name=r.organization_name, project_id=r.project_id, project_name=r.project_name,
                         invited_by=r.invited_by, expires_at=r.expires_at, from_mail=r.via_mail, account=r.account)


@post("/signup", opt={**SECRET_CHECKING_ROUTE, "problems": (403, 404, 409, 410)},
      dependencies={"db": Provide(provide_public_db)}, operation_id="signup_with_invite",
      tags=["members"], status_code=201,
      summary="Sign up with the invite mail's secret and accept in one step: a verified account and a session")
async def signup_with_invite(db: AsyncSession, data: InviteSignup, request: Request, state: State) -> InviteSignupOut:
    """The mail's secret proves the mailbox: the account is created verified, and an
    unverified account holding the address (whatever its hold) gives it up. An account
    with a verified address is never replaced: sign in instead (409)."""
    # Hashed before the first statement: waiting for a turn at password work (auth.passwords)
    # must not hold a pooled connection that other requests need.
    password_hash = await state.passwords.hash(data.password)
    preview = await _preview(db, data.invite_token)
    if not preview.via_mail:
        raise ProblemError(403, "signing up with an invite needs the secret of the invite mail's link")
    if preview.status != "pending":
        raise ProblemError(410, f"the invite is {preview.status}", extra={"invite_status": preview.status})
    request_id = request.scope["state"].get("request_id")
    try:
        user = (await db.execute(
            text("select * from auth.signup(:email, :hash, :name, :rid, interval '0', null, null, null, null, true)"),
            {"email": preview.email, "hash": password_hash, "name": data.display_name,
             "rid": request_id})).one()
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == "23505":
            raise conflict("an account with this email already exists: sign in to accept") from None
        raise
    own = await open_session(db, state, user.user_id, user.organization_id, request_id)
    assert own is not None
    await enter_as_session(db, own, state, request_id)  # accept as the new user, like any request
    membership = _membership(await _answer(db, user.user_id, data.invite_token, decline=False))
    membership.email_verified = True  # created verified: the mail's secret proved the address
    session = await open_session(db, state, user.user_id, membership.organization_id, request_id)
    assert session is not None
    return InviteSignupOut(user_id=user.user_id, email=preview.email, membership=membership, session=session)


invite_answers_router = Router(path="/v1/invites",
                               route_handlers=[accept_invite, decline_invite, preview_invite, signup_with_invite])


ROUTES = Routes(resources=[invites], handlers=[organization_invites_router, invite_answers_router])
