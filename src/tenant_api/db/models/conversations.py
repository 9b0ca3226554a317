from __future__ import annotations

import datetime as dt
from uuid import UUID

from sqlalchemy import BigInteger, text
from sqlalchemy.orm import Mapped, mapped_column

from tenant_api.db.models.base import TenantBase, Timestamps


class Conversation(TenantBase, Timestamps):
    __tablename__ = "conversation"

    project_id: Mapped[UUID]
    kind: Mapped[str]
    name: Mapped[str | None]
    # Bumped by each posted message (UPDATE ... RETURNING), never written by the ORM.
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class ConversationMember(TenantBase):
    __tablename__ = "conversation_member"

    project_id: Mapped[UUID]
    conversation_id: Mapped[UUID]
    member_type: Mapped[str]
    member_id: Mapped[UUID]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))


class ConversationMessage(TenantBase):
    __tablename__ = "conversation_message"

    project_id: Mapped[UUID]
    conversation_id: Mapped[UUID]
    seq: Mapped[int] = mapped_column(BigInteger)  # bigint: a cursor may be any int64
    sender_type: Mapped[str]
    sender_id: Mapped[UUID | None]
    body: Mapped[str]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
