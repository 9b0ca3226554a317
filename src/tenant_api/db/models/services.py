from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import TenantBase, Timestamps


class Service(TenantBase, Timestamps):
    """A user-defined (Knative) service."""

    __tablename__ = "service"

    project_id: Mapped[UUID]
    name: Mapped[str]
    image: Mapped[str]
    # the env list as returned: secret entries are {"name", "secret": true}, no value
    env: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    # {name: value} of the secret entries. Deferred: never loaded with the row, read
    # only where an update must carry a kept secret over (resources/services.py).
    secret_env: Mapped[dict[str, str]] = mapped_column(JSONB, server_default="{}", deferred=True)
    status: Mapped[str] = mapped_column(server_default="pending")
