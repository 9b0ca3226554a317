"""The audit trail beyond token_audit_log: usage records, seals, and the unified view."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from uuid import UUID

from sqlalchemy import ARRAY, BigInteger, LargeBinary, Numeric, SmallInteger
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.dialects.postgresql import UUID as PGUUID
from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import TenantBase


class TokenUsage(TenantBase):
    """One request made with a token (reason set: the token was refused)."""

    __tablename__ = "token_usage"

    occurred_at: Mapped[dt.datetime]
    token_id: Mapped[UUID]
    user_id: Mapped[UUID | None]
    prefix: Mapped[str]
    method: Mapped[str]
    route: Mapped[str]
    status: Mapped[int] = mapped_column(SmallInteger)
    duration_ms: Mapped[Decimal] = mapped_column(Numeric(12, 3))
    client_ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None]
    request_id: Mapped[str | None]
    reason: Mapped[str | None]
    request_count: Mapped[int]
    """Requests this row stands for: above 1 only for a refused token's requests of one minute."""


class AuditSeal(TenantBase):
    """A block of the organization's SHA-256 chain (or a purge record). The txid
    columns (xid8) are not mapped: verify reads them in SQL."""

    __tablename__ = "audit_seal"

    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str]
    last_id: Mapped[UUID]
    event_count: Mapped[int]
    event_ids: Mapped[list[UUID]] = mapped_column(ARRAY(PGUUID(as_uuid=True)))
    event_hashes: Mapped[list[bytes]] = mapped_column(ARRAY(LargeBinary))
    first_occurred_at: Mapped[dt.datetime | None]
    last_occurred_at: Mapped[dt.datetime | None]
    purged_through_seq: Mapped[int | None] = mapped_column(BigInteger)
    previous_digest: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_at: Mapped[dt.datetime]
