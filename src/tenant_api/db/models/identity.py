from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from sqlalchemy import ARRAY, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PGUUID
from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import Base, TenantBase, Timestamps, uuid7


class UserAccount(Base, Timestamps):
    __tablename__ = "user_account"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid7, server_default=text("uuidv7()"))
    email: Mapped[str]
    display_name: Mapped[str]
    kind: Mapped[str] = mapped_column(server_default="person")
    """person | service (a service account's identity: no password, no login)."""
    email_verified_at: Mapped[dt.datetime | None]
    email_hold_until: Mapped[dt.datetime | None]
    """Unverified: the address is held until then (policies/verification.sql)."""
    # Not granted to the API role: never loaded by the ORM, read only by auth.login_lookup.
    password_hash: Mapped[str] = mapped_column(Text, deferred=True)


class Organization(Base, Timestamps):
    __tablename__ = "organization"

    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid7, server_default=text("uuidv7()"))
    name: Mapped[str]


class OrganizationMembership(TenantBase, Timestamps):
    __tablename__ = "organization_membership"

    user_id: Mapped[UUID]
    role: Mapped[str]


class Workspace(TenantBase, Timestamps):
    __tablename__ = "workspace"

    name: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")


class Project(TenantBase, Timestamps):
    __tablename__ = "project"

    workspace_id: Mapped[UUID]
    name: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")


class PlatformToken(TenantBase, Timestamps):
    __tablename__ = "platform_token"

    user_id: Mapped[UUID]
    kind: Mapped[str]
    name: Mapped[str]
    prefix: Mapped[str]
    # Written, never read back: the API role has no SELECT on it.
    token_hash: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    scopes: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    project_ids: Mapped[list[UUID] | None] = mapped_column(ARRAY(PGUUID(as_uuid=True)))
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    created_by_token_id: Mapped[UUID | None]


class ServiceAccount(TenantBase, Timestamps):
    __tablename__ = "service_account"

    user_id: Mapped[UUID]
    name: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")
    scopes: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    project_ids: Mapped[list[UUID] | None] = mapped_column(ARRAY(PGUUID(as_uuid=True)))
    created_by_user_id: Mapped[UUID | None]


class TokenAuditLog(TenantBase):
    __tablename__ = "token_audit_log"

    occurred_at: Mapped[dt.datetime]
    token_id: Mapped[UUID | None]
    user_id: Mapped[UUID | None]
    request_id: Mapped[str | None]
    table_name: Mapped[str]
    row_id: Mapped[UUID | None]
    action: Mapped[str]
    changes: Mapped[dict[str, Any]] = mapped_column(JSONB)
