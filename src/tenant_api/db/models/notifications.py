from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import TenantBase, Timestamps


class DeviceToken(TenantBase, Timestamps):
    __tablename__ = "device_token"

    user_id: Mapped[UUID]
    platform: Mapped[str]
    token: Mapped[str]


class NotificationPreference(TenantBase, Timestamps):
    __tablename__ = "notification_preference"

    user_id: Mapped[UUID]
    channel: Mapped[str]
    enabled: Mapped[bool]
    events: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
