"""Cursor pagination, written once: the page size bounds, the cursor codec, keyset paging.

Every list route pages by keyset: rows ordered by a unique key (usually the UUIDv7 id,
so creation order; some lists by a pair such as (priority, id)), one row more than the
page fetched to know whether another page follows, and the key of the page's last row
handed back as an opaque cursor. The cursor is that key packed big-endian and encoded as
URL-safe base64 without padding; anything else is a 422 naming ``cursor``.

Lists that expose a sequence number instead (a conversation's messages ``before``/
``after``, a job's log ``after``) take it as a plain integer parameter, not a cursor.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Select, tuple_

from tenant_api.errors import invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

T = TypeVar("T")


@dataclass(frozen=True)
class CursorCodec:
    """The parts of a cursor, in order: ``"uuid"`` (16 bytes), ``"u32"`` or ``"u64"``
    (unsigned big-endian integers)."""

    parts: tuple[str, ...] = ("uuid",)

    _WIDTHS = {"uuid": 16, "u32": 4, "u64": 8}

    def encode(self, *values: Any) -> str:
        raw = b"".join(value.bytes if part == "uuid" else int(value).to_bytes(self._WIDTHS[part], "big")
                       for part, value in zip(self.parts, values, strict=True))
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, cursor: str) -> tuple[Any, ...]:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            if len(raw) != sum(self._WIDTHS[p] for p in self.parts):
                raise ValueError
            values: list[Any] = []
            for part in self.parts:
                width = self._WIDTHS[part]
                chunk, raw = raw[:width], raw[width:]
                values.append(UUID(bytes=chunk) if part == "uuid" else int.from_bytes(chunk, "big"))
            return tuple(values)
        except (binascii.Error, ValueError, struct.error):
            raise invalid("cursor", "not a cursor returned by this API") from None


ID_CURSOR = CursorCodec()


def encode_cursor(last_id: UUID) -> str:
    """The cursor after the row with this id (lists ordered by id)."""
    return ID_CURSOR.encode(last_id)


def decode_cursor(cursor: str) -> UUID:
    """The id a cursor from ``encode_cursor`` resumes after (422 naming ``cursor`` if it is none)."""
    return ID_CURSOR.decode(cursor)[0]


def cut_page(rows: Sequence[T], limit: int, key: Callable[[T], tuple[Any, ...]],
             codec: CursorCodec = ID_CURSOR) -> tuple[list[T], str | None]:
    """The page out of ``limit + 1`` fetched rows and the cursor of the next one (None: the last page).
    ``key`` gives a row's sort key, the parts of ``codec``."""
    if len(rows) > limit:
        return list(rows[:limit]), codec.encode(*key(rows[limit - 1]))
    return list(rows), None


@dataclass(frozen=True)
class Keyset:
    """Keyset pagination of a SELECT over ``columns`` (unique together, in that order).

    ``query`` orders the statement by them, resumes after a cursor and fetches one row
    more than the page; ``page`` cuts that to the page and the next cursor."""

    columns: tuple[Any, ...]
    codec: CursorCodec = ID_CURSOR
    descending: bool = False

    def query(self, stmt: Select[Any], cursor: str | None, limit: int) -> Select[Any]:
        if cursor:
            after = self.codec.decode(cursor)
            key = self.columns[0] if len(self.columns) == 1 else tuple_(*self.columns)
            value = after[0] if len(after) == 1 else tuple_(*after)
            stmt = stmt.where(key < value if self.descending else key > value)
        order = [c.desc() if self.descending else c.asc() for c in self.columns]
        return stmt.order_by(*order).limit(limit + 1)

    def page(self, rows: Sequence[T], limit: int, key: Callable[[T], tuple[Any, ...]] | None = None,
             ) -> tuple[list[T], str | None]:
        """``key`` defaults to the rows' attributes named like the columns."""
        names = [c.key for c in self.columns]
        return cut_page(rows, limit, key or (lambda row: tuple(getattr(row, n) for n in names)), self.codec)


def by_id(model: Any, *, descending: bool = False) -> Keyset:
    """Keyset pagination on a model's UUIDv7 id (creation order, or newest first)."""
    return Keyset((model.id,), descending=descending)
