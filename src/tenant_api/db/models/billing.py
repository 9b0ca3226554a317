from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import TenantBase, Timestamps


class UserTrial(TenantBase, Timestamps):
    __tablename__ = "user_trial"

    plan: Mapped[str]
    started_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
    ends_at: Mapped[dt.datetime]
    converted_at: Mapped[dt.datetime | None]
    cancelled_at: Mapped[dt.datetime | None]

    def status_at(self, now: dt.datetime) -> str:
        """converted / cancelled once recorded (they end the trial for good), else
        active until ends_at and expired from then on."""
        if self.converted_at is not None:
            return "converted"
        if self.cancelled_at is not None:
            return "cancelled"
        return "active" if now < self.ends_at else "expired"
