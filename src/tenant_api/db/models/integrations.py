"""Idempotency keys and webhooks (revision 0013)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from sqlalchemy import ARRAY, BigInteger, LargeBinary, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PGUUID
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import text

from tenant_api.db.models.base import TenantBase, Timestamps


class IdempotencyKey(TenantBase):
    __tablename__ = "idempotency_key"

    token_id: Mapped[UUID]
    key_hash: Mapped[bytes] = mapped_column(LargeBinary)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    method: Mapped[str]
    path: Mapped[str]
    status_code: Mapped[int]
    content_type: Mapped[str | None]
    response: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
    expires_at: Mapped[dt.datetime]


class Webhook(TenantBase, Timestamps):
    __tablename__ = "webhook"

    url: Mapped[str]
    url_origin: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    project_ids: Mapped[list[UUID] | None] = mapped_column(ARRAY(PGUUID(as_uuid=True)))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    owner_token_id: Mapped[UUID]
    paused_reason: Mapped[str | None]
    paused_at: Mapped[dt.datetime | None]
    # Written, never read back by the API role (no SELECT on them): the signing secret is
    # derived from the nonce and a server key (tenant_api.webhooks.signing).
    secret_nonce: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    previous_secret_nonce: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    previous_secret_expires_at: Mapped[dt.datetime | None]
    secret_rotated_at: Mapped[dt.datetime | None]


class WebhookEvent(TenantBase):
    __tablename__ = "webhook_event"

    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str]
    area: Mapped[str]
    project_id: Mapped[UUID | None]
    object_id: Mapped[UUID]
    ordering_key: Mapped[UUID]
    actor_token_id: Mapped[UUID | None]
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    occurred_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))


class WebhookDelivery(TenantBase, Timestamps):
    __tablename__ = "webhook_delivery"

    webhook_id: Mapped[UUID]
    event_id: Mapped[UUID]
    event_type: Mapped[str]
    event_seq: Mapped[int] = mapped_column(BigInteger)
    ordering_key: Mapped[UUID]
    status: Mapped[str] = mapped_column(server_default="pending")
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
    last_attempt_at: Mapped[dt.datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None]
    delivered_at: Mapped[dt.datetime | None]
    redelivered_at: Mapped[dt.datetime | None]


class WebhookAttempt(TenantBase):
    __tablename__ = "webhook_attempt"

    webhook_id: Mapped[UUID]
    delivery_id: Mapped[UUID]
    attempt: Mapped[int]
    outcome: Mapped[str]
    started_at: Mapped[dt.datetime]
    duration_ms: Mapped[int | None]
    status_code: Mapped[int | None]
    error: Mapped[str | None]
    response_excerpt: Mapped[str | None]
