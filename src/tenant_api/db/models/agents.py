from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import ARRAY, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import TenantBase, Timestamps


class Agent(TenantBase, Timestamps):
    __tablename__ = "agent"

    project_id: Mapped[UUID]
    name: Mapped[str]
    type: Mapped[str] = mapped_column(server_default="assistant")
    status: Mapped[str] = mapped_column(server_default="active")
    template_id: Mapped[UUID | None]


class AgentTemplate(TenantBase, Timestamps):
    __tablename__ = "agent_template"

    slug: Mapped[str]
    name: Mapped[str]
    category: Mapped[str]
    tools: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    default_profile: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class AgentProfile(TenantBase, Timestamps):
    __tablename__ = "agent_profile"

    project_id: Mapped[UUID]
    agent_id: Mapped[UUID]
    display_name: Mapped[str]
    avatar_url: Mapped[str | None]
    voice: Mapped[str | None]
    role: Mapped[str | None]
    bio: Mapped[str] = mapped_column(server_default="")


class AgentEmailRule(TenantBase, Timestamps):
    __tablename__ = "agent_email_rule"

    project_id: Mapped[UUID]
    agent_id: Mapped[UUID]
    direction: Mapped[str]
    pattern: Mapped[str]
    action: Mapped[str]
    target: Mapped[str | None]
    priority: Mapped[int] = mapped_column(server_default="100")
    enabled: Mapped[bool] = mapped_column(server_default="true")


class AgentConversation(TenantBase, Timestamps):
    __tablename__ = "agent_conversation"

    project_id: Mapped[UUID]
    agent_id: Mapped[UUID]
    conversation_key: Mapped[str]
    external_conversation_id: Mapped[str]
