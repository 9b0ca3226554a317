"""Project invites.

  /v1/projects/{project_id}/invites                 list (members:read), create (members:write)
  /v1/projects/{project_id}/invites/{id}            get (members:read), revoke: DELETE (members:write)
  /v1/projects/{project_id}/invites/{id}/resend     new secret and expiry (members:write)
  /v1/invites/accept, /v1/invites/decline           the invitee, with any credential of theirs

Lists and gets are the generic resource (``invites``); what is the invite's own lives
here: the secret (returned once, stored as a hash, re-derivable only by the mailer, see
invites.tokens), the outbox row written in the same transaction, one open invite per
(project, email), and accepting, which runs as the invitee through auth.accept_invite.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Response, Router, delete, post
from litestar.datastructures import State
from msgspec import Meta
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.credentials import token_hash
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
from tenant_api.invites import tokens
from tenant_api.resources.base import Input, Nest, Resource, TenantService, to_read
from tenant_api.settings import InviteSettings

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
LINK_LINE = "[accept link]"
"""The body line the mailer replaces with the accept link (names never hold a newline)."""

InviteRole = Literal["admin", "editor", "viewer"]
InviteStatus = Literal["pending", "accepted", "declined", "revoked", "expired"]


class InviteRead(msgspec.Struct):
    id: UUID
    project_id: UUID
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
    """The secret. Shown in this response only (it is also in the mail)."""


class InviteCreate(Input):
    email: Annotated[str, Meta(min_length=3, max_length=320)]
    role: InviteRole
    resend: bool = False
    """If an open invite for this email exists, resend it (new secret, expiry and this
    role) instead of refusing with 409."""


class InviteAnswer(Input):
    invite_token: Annotated[str, Meta(min_length=1, max_length=200)]


class MembershipOut(msgspec.Struct):
    organization_id: UUID
    project_id: UUID
    membership_id: UUID
    role: str


def _one_line(value: str) -> str:
    return " ".join(value.split())


class InviteBaseService(TenantService[ProjectInvite]):
    async def _project(self, project_id: UUID) -> Project:
        project = await self.repository.session.scalar(
            select(Project).where(Project.organization_id == self.org, Project.id == project_id))
        if project is None:
            raise not_found("project")
        return project

    async def _locked(self, project_id: UUID, invite_id: UUID) -> tuple[ProjectInvite, Project]:
        """The invite, locked (an accept may be racing) and freshly read, and its project."""
        project = await self._project(project_id)
        row = await self.repository.session.scalar(
            select(ProjectInvite)
            .where(ProjectInvite.organization_id == self.org, ProjectInvite.project_id == project_id,
                   ProjectInvite.id == invite_id)
            .with_for_update(of=ProjectInvite)
            .execution_options(populate_existing=True))
        if row is None:
            raise not_found("invite")
        return row, project

    async def _cancel_mail(self, row: ProjectInvite) -> None:
        """A mail not sent yet carries a link that no longer works: never send it."""
        await self.repository.session.execute(
            update(InviteOutbox)
            .where(InviteOutbox.organization_id == self.org, InviteOutbox.invite_id == row.id,
                   InviteOutbox.status == "pending")
            .values(status="cancelled"))

    async def _message(self, project: Project, email: str, role: str, expires_at: dt.datetime) -> tuple[str, str]:
        session = self.repository.session
        inviter = await session.scalar(select(UserAccount.display_name).where(UserAccount.id == self.ctx.user_id))
        org = await session.scalar(select(Organization.name).where(Organization.id == self.org))
        where = f"the project “{_one_line(project.name)}”" + (f" of {_one_line(org)}" if org else "")
        body = "\n".join([
            f"{_one_line(inviter or 'Someone')} invited you to {where} as {role}.",
            "",
            f"Sign in as {email} and accept the invitation:",
            LINK_LINE,
            "",
            f"The invitation expires on {expires_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC.",
            "If you did not expect it, ignore this mail.",
        ])
        return f"Invitation to {_one_line(project.name)}"[:500], body

    async def _issue(self, row: ProjectInvite, project: Project, settings: InviteSettings, key: bytes) -> InviteSecret:
        """Give the invite a new secret and expiry, and queue its mail (cancelling any
        earlier one not yet sent: its link would no longer work)."""
        session = self.repository.session
        now = await session.scalar(select(func.now()))
        nonce = tokens.new_nonce()
        secret = tokens.derive(key, nonce)
        row.token_hash = token_hash(secret)
        row.expires_at = now + dt.timedelta(days=settings.ttl_days)
        await session.flush()  # the invite row first: the outbox row references it
        await self._cancel_mail(row)
        subject, body = await self._message(project, row.email, row.role, row.expires_at)
        session.add(InviteOutbox(organization_id=self.org, project_id=row.project_id, invite_id=row.id,
                                 recipient=row.email, subject=subject, body=body, nonce=nonce))
        await session.flush()
        await session.refresh(row)
        return InviteSecret(**msgspec.structs.asdict(to_read(InviteRead, row)), invite_token=secret)

    async def invite(self, project_id: UUID, data: InviteCreate, settings: InviteSettings,
                     key: bytes) -> tuple[InviteSecret, bool]:
        """Returns the invite with its secret, and whether it is new (else resent)."""
        session = self.repository.session
        project = await self._project(project_id)
        email = data.email.strip()
        if not _EMAIL.match(email):
            raise invalid("email", "not an email address")
        same_email = func.lower(UserAccount.email) == email.lower()
        if await session.scalar(
            select(ProjectMembership.id).join(UserAccount, UserAccount.id == ProjectMembership.user_id)
            .where(ProjectMembership.organization_id == self.org, ProjectMembership.project_id == project_id,
                   same_email)):
            raise conflict("this email is already a member of the project")
        # Visible to organization admins only; for a project admin the accept says it.
        if await session.scalar(
            select(OrganizationMembership.id).join(UserAccount, UserAccount.id == OrganizationMembership.user_id)
            .where(OrganizationMembership.organization_id == self.org, same_email)):
            raise conflict("this email is already a member of the organization (it sees every project)")
        existing = await session.scalar(
            select(ProjectInvite.id).where(
                ProjectInvite.organization_id == self.org, ProjectInvite.project_id == project_id,
                func.lower(ProjectInvite.email) == email.lower(), ProjectInvite.accepted_at.is_(None),
                ProjectInvite.declined_at.is_(None), ProjectInvite.revoked_at.is_(None)))
        if existing is not None:
            if not data.resend:
                raise conflict(f"an open invite for this email exists ({existing}): resend it, or revoke it first",
                               invite_id=str(existing))
            return await self.resend(project_id, existing, settings, key, role=data.role), False
        row = ProjectInvite(organization_id=self.org, project_id=project_id, email=email, role=data.role,
                            invited_by_user_id=self.ctx.user_id)
        session.add(row)
        return await self._issue(row, project, settings, key), True

    async def resend(self, project_id: UUID, invite_id: UUID, settings: InviteSettings, key: bytes,
                     role: str | None = None) -> InviteSecret:
        row, project = await self._locked(project_id, invite_id)
        if row.status not in ("pending", "expired"):
            raise conflict(f"the invite is {row.status}: only a pending or expired invite can be resent")
        row.send_count += 1
        if role is not None:
            row.role = role
        return await self._issue(row, project, settings, key)

    async def revoke(self, project_id: UUID, invite_id: UUID) -> None:
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


def _key(state: State) -> bytes:
    return tokens.link_key(state.settings.auth.jwt_secret)


@post("/", opt={"scope": "members:write"}, operation_id="create_invite", summary="Invite an email to the project",
      tags=["members"])
async def create_invite(service: InviteBaseService, project_id: UUID, data: InviteCreate,
                        state: State) -> Response[InviteSecret]:
    secret, created = await service.invite(project_id, data, state.settings.invites, _key(state))
    return Response(secret, status_code=201 if created else 200)


@post("/{item_id:uuid}/resend", opt={"scope": "members:write"}, operation_id="resend_invite",
      summary="New secret and expiry; the old secret stops working", tags=["members"], status_code=200)
async def resend_invite(service: InviteBaseService, project_id: UUID, item_id: UUID, state: State) -> InviteSecret:
    return await service.resend(project_id, item_id, state.settings.invites, _key(state))


@delete("/{item_id:uuid}", opt={"scope": "members:write"}, operation_id="revoke_invite",
        summary="Revoke an invite", tags=["members"])
async def revoke_invite(service: InviteBaseService, project_id: UUID, item_id: UUID) -> None:
    await service.revoke(project_id, item_id)


invites = Resource(
    name="invite", path="/v1/projects/{project_id:uuid}/invites", model=ProjectInvite, area="members",
    read=InviteRead, service=InviteBaseService, deletable=False, filters={"status": InviteStatus},
    nest=Nest(param="project_id", model=Project, column="project_id", label="project"),
    actions=[create_invite, resend_invite, revoke_invite],
)

_GONE = {"expired": "the invite has expired", "revoked": "the invite was revoked",
         "used": "the invite was already used", "declined": "the invite was declined"}


async def _answer(db: AsyncSession, ctx: Principal, token: str, decline: bool) -> Any:
    try:
        digest = tokens.invite_hash(token.strip())
    except tokens.MalformedInvite:
        raise invalid("invite_token", "not an invite token") from None
    row = (await db.execute(text("select * from auth.accept_invite(:hash, :user_id, :decline)"),
                            {"hash": digest, "user_id": ctx.user_id, "decline": decline})).one()
    if row.status == "not_found":
        raise not_found("invite")
    if row.status in _GONE:
        raise ProblemError(410, _GONE[row.status], extra={"invite_status": row.status})
    if row.status == "already_member":
        raise conflict("you are already a member of that organization or project")
    return row


@post("/accept", opt={"scope": None, "problems": (404, 410)}, operation_id="accept_invite", tags=["members"],
      status_code=201,
      summary="Accept an invite addressed to your email: become a member of its project")
async def accept_invite(db: AsyncSession, ctx: Principal, data: InviteAnswer) -> MembershipOut:
    row = await _answer(db, ctx, data.invite_token, decline=False)
    return MembershipOut(organization_id=row.organization_id, project_id=row.project_id,
                         membership_id=row.membership_id, role=row.role)


@post("/decline", opt={"scope": None, "problems": (404, 410)}, operation_id="decline_invite", tags=["members"],
      status_code=204,
      summary="Decline an invite addressed to your email")
async def decline_invite(db: AsyncSession, ctx: Principal, data: InviteAnswer) -> None:
    await _answer(db, ctx, data.invite_token, decline=True)


invite_answers_router = Router(path="/v1/invites", route_handlers=[accept_invite, decline_invite])
