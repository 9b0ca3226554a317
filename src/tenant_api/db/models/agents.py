from __future__ import annotations

from uuid import UUID

from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import TenantBase, Timestamps


class Agent(TenantBase, Timestamps):
    __tablename__ = "agent"

    project_id: Mapped[UUID]
    name: Mapped[str]
    type: Mapped[str] = mapped_column(server_default="assistant")
    status: Mapped[str] = mapped_column(server_default="active")
