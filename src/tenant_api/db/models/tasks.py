from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, LargeBinary, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import text

from tenant_api.db.models.base import TenantBase, Timestamps


class Task(TenantBase, Timestamps):
    __tablename__ = "task"

    project_id: Mapped[UUID]
    agent_id: Mapped[UUID | None]
    summary: Mapped[str]
    details: Mapped[str] = mapped_column(server_default="")
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    status: Mapped[str] = mapped_column(server_default="todo")


class JobSchedule(TenantBase, Timestamps):
    __tablename__ = "job_schedule"

    project_id: Mapped[UUID]
    name: Mapped[str]
    cron: Mapped[str]
    timezone: Mapped[str] = mapped_column(server_default="UTC")
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    target: Mapped[dict[str, Any]] = mapped_column(JSONB)
    next_run_at: Mapped[dt.datetime | None]
    last_run_at: Mapped[dt.datetime | None]
    max_attempts: Mapped[int] = mapped_column(server_default=text("3"))
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))


class RunColumns:
    """The runner protocol's columns (tenant_api.runs), shared by jobs, computer-use tasks
    and robot macro executions. Only a claim, a heartbeat, a finish or the lease reaper
    write them; app.guard_run (revision 0013) holds every path to the same rules."""

    max_attempts: Mapped[int] = mapped_column(server_default=text("3"))
    attempt: Mapped[int] = mapped_column(server_default=text("0"))
    lease_expires_at: Mapped[dt.datetime | None]
    # SHA-256 of the claim secret: compared, never shown.
    claim_secret_hash: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    claimed_by_token_id: Mapped[UUID | None]
    claimed_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None]


class Job(TenantBase, RunColumns, Timestamps):
    __tablename__ = "job"

    project_id: Mapped[UUID]
    schedule_id: Mapped[UUID | None]
    target: Mapped[dict[str, Any]] = mapped_column(JSONB)
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    status: Mapped[str] = mapped_column(server_default="queued")
    exit_code: Mapped[int | None]
    scheduled_for: Mapped[dt.datetime | None]
    # Set by the database (app.guard_status) on transitions.
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    log_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class JobLog(TenantBase):
    __tablename__ = "job_log"

    project_id: Mapped[UUID]
    job_id: Mapped[UUID]
    seq: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(server_default=text("0"))
    data: Mapped[str]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))


class ComputerUseTask(TenantBase, RunColumns, Timestamps):
    __tablename__ = "computer_use_task"

    project_id: Mapped[UUID]
    instruction: Mapped[str]
    # No foreign key yet: desktop_virtual_machine is added by a parallel revision.
    desktop_vm_id: Mapped[UUID | None]
    status: Mapped[str] = mapped_column(server_default="queued")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    exit_code: Mapped[int | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
