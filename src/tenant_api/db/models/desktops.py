from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Computed, text
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from tenant_api.db.models.base import TenantBase, Timestamps
from tenant_api.db.models.tasks import RunColumns


class InetText(TypeDecorator[str]):
    """inet in the database, its canonical text in Python (asyncpg returns ipaddress objects)."""

    impl = INET
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else str(value)


class DesktopConfig(TenantBase, Timestamps):
    __tablename__ = "desktop_configs"

    project_id: Mapped[UUID]
    name: Mapped[str]
    image: Mapped[str]
    cpu: Mapped[int] = mapped_column(server_default="2")
    memory_mb: Mapped[int] = mapped_column(server_default="4096")
    disk_gb: Mapped[int] = mapped_column(server_default="40")
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class DesktopVirtualMachine(TenantBase, Timestamps):
    __tablename__ = "desktop_virtual_machine"

    project_id: Mapped[UUID]
    config_id: Mapped[UUID]
    name: Mapped[str]
    status: Mapped[str] = mapped_column(server_default="provisioning")
    host: Mapped[str | None]
    ip_address: Mapped[str | None] = mapped_column(InetText)


class DesktopConnection(TenantBase, Timestamps):
    __tablename__ = "desktop_connection"

    project_id: Mapped[UUID]
    vm_id: Mapped[UUID]
    token_id: Mapped[UUID]
    api_instance_id: Mapped[str]
    status: Mapped[str] = mapped_column(server_default="connected")
    connected_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
    last_seen_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
    disconnected_at: Mapped[dt.datetime | None]
    close_reason: Mapped[str | None]


class RobotMacro(TenantBase, Timestamps):
    __tablename__ = "robot_macro"

    project_id: Mapped[UUID]
    name: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    vm_id: Mapped[UUID | None]


class RobotMacroExecution(TenantBase, RunColumns, Timestamps):
    __tablename__ = "robot_macro_execution"

    project_id: Mapped[UUID]
    macro_id: Mapped[UUID]
    vm_id: Mapped[UUID | None]
    status: Mapped[str] = mapped_column(server_default="queued")
    exit_code: Mapped[int | None]
    # Set by the database (app.guard_status) when a robot starts and finishes it.
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(
        BigInteger, Computed("(extract(epoch from (finished_at - started_at)) * 1000)::bigint"))
    output: Mapped[Any] = mapped_column(JSONB, nullable=True)
