"""The request context, set where every transaction begins.

A request's session carries its credential in ``session.info``. When the session begins
a transaction, the ``after_begin`` listener calls ``auth.begin_request(...)`` on that
transaction's connection: one round trip that checks the credential and sets the
transaction-local settings the RLS policies read. Because it happens in after_begin (not
on connect, not once per session) every transaction gets the context, including one
begun after a commit, and no transaction can run with a stale one.

A session without a credential (signup, login) begins transactions with no context at
all: the policies then show no rows and accept no writes. A project-restricted credential's
transaction switches to tenant_api_projects right after (RESTRICTED_ROLE_SQL).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction

from tenant_api.scopes import scopes_of_mask

_PRINCIPAL_COLUMNS = (
    "status, token_id, organization_id, user_id, kind, role, scope_mask, project_ids, prefix, expires_at")
BEGIN_REQUEST = text(
    f"select {_PRINCIPAL_COLUMNS} from auth.begin_request(:token_hash, :session_id, :session_org, :request_id)"  # noqa: S608
)
# The same call for a raw asyncpg connection (the read path, auth.request.provide_read).
BEGIN_REQUEST_SQL = f"select {_PRINCIPAL_COLUMNS} from auth.begin_request($1, $2, $3, $4)"  # noqa: S608
# A project-restricted context is read by the API role's restricted twin: the API role's
# own policies never match it (policies/context.sql). For the rest of the transaction.
RESTRICTED_ROLE_SQL = "set local role tenant_api_projects"


@dataclass(frozen=True, slots=True)
class Credential:
    """What the Authorization header proved without the database."""

    kind: str  # "api" | "session"
    token_hash: bytes | None = None
    session_id: UUID | None = None
    session_org: UUID | None = None
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """What auth.begin_request returned: who this request runs as."""

    status: str
    token_id: UUID | None
    organization_id: UUID | None
    user_id: UUID | None
    kind: str | None
    role: str | None
    scopes: frozenset[str]
    project_ids: tuple[UUID, ...] | None
    prefix: str | None
    expires_at: dt.datetime | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def restricted(self) -> bool:
        """Limited to some projects: the transaction must run as tenant_api_projects."""
        return self.ok and self.project_ids is not None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def from_row(cls, row: Any) -> Principal:
        """From auth.begin_request's row (a SQLAlchemy row mapping or an asyncpg record)."""
        return cls(
            status=row["status"],
            token_id=row["token_id"],
            organization_id=row["organization_id"],
            user_id=row["user_id"],
            kind=row["kind"],
            role=row["role"],
            scopes=scopes_of_mask(row["scope_mask"]),
            project_ids=tuple(row["project_ids"]) if row["project_ids"] is not None else None,
            prefix=row["prefix"],
            expires_at=row["expires_at"],
        )


class ContextSession(Session):
    """A Session whose transactions start with the request context (see module doc)."""


@event.listens_for(ContextSession, "after_begin")
def _begin_request(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    credential: Credential | None = session.info.get("credential")
    if credential is None:
        return
    row: Any = connection.execute(
        BEGIN_REQUEST,
        {
            "token_hash": credential.token_hash,
            "session_id": credential.session_id,
            "session_org": credential.session_org,
            "request_id": session.info.get("request_id"),
        },
    ).one()
    principal = Principal.from_row(row._mapping)
    if principal.restricted:
        connection.exec_driver_sql(RESTRICTED_ROLE_SQL)
    session.info["principal"] = principal
