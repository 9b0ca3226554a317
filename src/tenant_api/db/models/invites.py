from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING
from uuid import UUID

from sqlalchemy import LargeBinary, case, func, select
from sqlalchemy.orm import Mapped, column_property, mapped_column

from tenant_api.db.models.base import TenantBase, Timestamps


class InviteOutbox(TenantBase, Timestamps):
    __tablename__ = "invite_outbox"

    kind: Mapped[str] = mapped_column(server_default="invite")
    """invite | verify (an email verification mail: user_id set, no invite)."""
    project_id: Mapped[UUID | None]
    invite_id: Mapped[UUID | None]
    user_id: Mapped[UUID | None]
    recipient: Mapped[str]
    subject: Mapped[str]
    body: Mapped[str]
    # Not granted to the API role: written, never read back.
    nonce: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    status: Mapped[str] = mapped_column(server_default="pending")
    attempts: Mapped[int] = mapped_column(server_default="0")
    next_attempt_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    last_error: Mapped[str | None]
    sent_at: Mapped[dt.datetime | None]


class ProjectInvite(TenantBase, Timestamps):
    __tablename__ = "project_invite"
    if TYPE_CHECKING:  # column_property()s assigned below the class
        status: str
        delivery_status: str | None

    project_id: Mapped[UUID | None]
    """None: an invite to the organization itself (role admin, member or auditor)."""
    email: Mapped[str]
    role: Mapped[str]
    # Not granted to the API role: written, never read back.
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    mail_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    expires_at: Mapped[dt.datetime]
    invited_by_user_id: Mapped[UUID | None]
    send_count: Mapped[int] = mapped_column(server_default="1")
    accepted_at: Mapped[dt.datetime | None]
    accepted_by_user_id: Mapped[UUID | None]
    declined_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


# Derived, by the database's clock (the one accept_invite uses).
ProjectInvite.status = column_property(  # type: ignore[assignment]
    case(
        (ProjectInvite.revoked_at.isnot(None), "revoked"),
        (ProjectInvite.accepted_at.isnot(None), "accepted"),
        (ProjectInvite.declined_at.isnot(None), "declined"),
        (ProjectInvite.expires_at <= func.now(), "expired"),
        else_="pending",
    )
)
# The latest mail's delivery state: pending | sent | failed | cancelled.
ProjectInvite.delivery_status = column_property(  # type: ignore[assignment]
    select(InviteOutbox.status)
    .where(InviteOutbox.organization_id == ProjectInvite.organization_id,
           InviteOutbox.invite_id == ProjectInvite.id)
    .order_by(InviteOutbox.id.desc())
    .limit(1)
    .correlate_except(InviteOutbox)
    .scalar_subquery()
)


class ProjectMembership(TenantBase, Timestamps):
    __tablename__ = "project_membership"

    project_id: Mapped[UUID]
    user_id: Mapped[UUID]
    role: Mapped[str]
    invite_id: Mapped[UUID | None]
