"""/v1/audit/events: the rows the audit trigger wrote, for audit:read."""

import datetime as dt
from typing import Any, Literal
from uuid import UUID

import msgspec
from advanced_alchemy.filters import BeforeAfter
from litestar import Router, get
from litestar.di import Provide
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import TokenAuditLog
from tenant_api.resources.base import DEFAULT_LIMIT, MAX_LIMIT, TenantService, service_for, to_read


class AuditEvent(msgspec.Struct):
    id: UUID
    occurred_at: dt.datetime
    token_id: UUID | None
    user_id: UUID | None
    request_id: str | None
    table_name: str
    row_id: UUID | None
    action: str
    changes: dict[str, Any]


class AuditEventPage(msgspec.Struct):
    items: list[AuditEvent]
    next_cursor: str | None


AuditService = service_for(TokenAuditLog, "audit event")


async def provide_audit(db: AsyncSession, ctx: Principal) -> TenantService:
    return AuditService(db, ctx)


@get("/events", opt={"scope": "audit:read"}, operation_id="list_audit_events", tags=["audit"])
async def list_events(
    audit: TenantService,
    limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Parameter(default=None, max_length=64),
    token_id: UUID | None = None,
    table: str | None = Parameter(default=None, max_length=63),
    action: Literal["INSERT", "UPDATE", "DELETE"] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> AuditEventPage:
    extra = [BeforeAfter("occurred_at", before=until, after=since)] if since or until else []
    rows, next_cursor = await audit.page(
        *extra, limit=limit, cursor=cursor, token_id=token_id, table_name=table, action=action
    )
    return AuditEventPage(items=[to_read(AuditEvent, r) for r in rows], next_cursor=next_cursor)


audit_router = Router(path="/v1/audit", route_handlers=[list_events], dependencies={"audit": Provide(provide_audit)})
