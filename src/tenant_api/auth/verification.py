"""Verified email addresses and "one step in": what sign-up, verification and the invite
page share.

The rules live in the database (policies/verification.sql): an unverified account holds
its address for AuthSettings.email_hold_hours, cannot answer invites with the inviter's
secret, and is verified by the secret of its verification mail or of an invite mail.
This module makes the verification mail (through the invite outbox and its mailer: the
secret is re-derived from the row's nonce, never stored) and opens sessions for the
routes that end with one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

import msgspec
from litestar.datastructures import State
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.credentials import token_hash
from tenant_api.db.context import RESTRICTED_ROLE_SQL
from tenant_api.auth import mail_secrets

LINK_LINE = "[link]"
"""The body line the mailer replaces with the mail's link (names never hold a newline)."""


class SessionOut(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    organization_id: UUID


@dataclass(frozen=True)
class VerificationMail:
    nonce: bytes
    secret_hash: bytes
    subject: str
    body: str


def verification_mail(jwt_secret: str, email: str, hold_until: dt.datetime | None) -> VerificationMail:
    nonce = mail_secrets.new_nonce()
    secret = mail_secrets.derive(mail_secrets.verify_key(jwt_secret), nonce, mail_secrets.VERIFY_PREFIX)
    lines = [
        "Confirm that this address is yours by opening the link below:",
        LINK_LINE,
        "",
    ]
    if hold_until is not None:
        lines.append(f"Until you do, the address is held for your account only until "
                     f"{hold_until.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC.")
    lines.append(f"If you did not sign up with {email}, ignore this mail.")
    return VerificationMail(nonce=nonce, secret_hash=token_hash(secret), subject="Confirm your email address",
                            body="\n".join(lines))


async def open_session(db: AsyncSession, state: State, user_id: UUID, organization_id: UUID | None,
                       request_id: str | None) -> SessionOut | None:
    """A session for ``user_id`` (in ``organization_id``, or their first organization),
    as POST /v1/auth/login makes after the password checked out. None: may not enter."""
    ttl = dt.timedelta(seconds=state.settings.auth.session_ttl_seconds)
    row = (await db.execute(text("select * from auth.create_session(:uid, :org, :ttl, :rid, null)"),
                            {"uid": user_id, "org": organization_id, "ttl": ttl, "rid": request_id})).first()
    if row is None:
        return None
    token = state.codec.issue(session_id=row.token_id, organization_id=row.organization_id, user_id=user_id,
                              expires_at=row.expires_at)
    return SessionOut(access_token=token, token_type="bearer", expires_in=int(ttl.total_seconds()),  # noqa: S106 -- a scheme name
                      organization_id=row.organization_id)


async def enter_as_session(db: AsyncSession, session: SessionOut, state: State, request_id: str | None) -> None:
    """Give a public route's transaction the context of a session just opened in it
    (auth.begin_request, as every request does), so it can go on as that user."""
    credential = state.codec.parse(session.access_token)
    row = (await db.execute(text("select status, project_ids from auth.begin_request(null, :sid, :org, :rid)"),
                            {"sid": credential.session_id, "org": credential.session_org, "rid": request_id})).one()
    if row.status != "ok":
        raise RuntimeError(f"a session just opened was refused: {row.status}")
    if row.project_ids is not None:
        await db.execute(text(RESTRICTED_ROLE_SQL))
