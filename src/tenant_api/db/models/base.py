from __future__ import annotations

import datetime as dt
import os
import time
from uuid import UUID

from sqlalchemy import DateTime, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def uuid7() -> UUID:
    """A UUIDv7 (RFC 9562): 48-bit millisecond time, version, 74 random bits.

    Generated here so INSERTs need no RETURNING round trip for the key; the tables also
    default to PostgreSQL's uuidv7() for rows written in SQL.
    """
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (rand >> 62 & 0xFFF) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    return UUID(int=value)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: DateTime(timezone=True)}


class TenantBase(Base):
    """A tenant table: (organization_id, id) is the primary key, ids are UUIDv7."""

    __abstract__ = True

    organization_id: Mapped[UUID] = mapped_column(primary_key=True)
    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid7, server_default=text("uuidv7()"))


class Timestamps:
    created_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=text("now()"))
