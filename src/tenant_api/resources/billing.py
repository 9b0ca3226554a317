"""Billing (scope area ``billing``): the organization's trial.

GET /v1/trial returns it (404 if the organization has none); PUT /v1/trial creates it
or updates the fields sent (fields left out keep their values; null clears
converted_at or cancelled_at). status is derived on read: converted or cancelled once
recorded, else active before ends_at and expired from then on."""

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Router, get, put
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import UserTrial
from tenant_api.errors import ProblemError, invalid, not_found
from tenant_api.inputs import Timestamp
from tenant_api.inputs import Input
from tenant_api.resources.base import service_for
from tenant_api.resources.schemas import set_fields
from tenant_api.routing import Routes

Plan = Annotated[str, Meta(min_length=1, max_length=100)]


class TrialRead(msgspec.Struct):
    id: UUID
    plan: str
    status: Literal["active", "expired", "converted", "cancelled"]
    started_at: dt.datetime
    ends_at: dt.datetime
    converted_at: dt.datetime | None
    cancelled_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class TrialIn(Input):
    """To create: plan and ends_at (started_at defaults to now). To update: any field."""

    plan: Plan | UnsetType = UNSET
    started_at: Timestamp | UnsetType = UNSET
    ends_at: Timestamp | UnsetType = UNSET
    converted_at: Timestamp | None | UnsetType = UNSET
    cancelled_at: Timestamp | None | UnsetType = UNSET


UserTrialService = service_for(UserTrial, "trial")
TRIAL_FIELDS = ("plan", "started_at", "ends_at", "converted_at", "cancelled_at")


def _read(row: UserTrial) -> TrialRead:
    values = {f: getattr(row, f) for f in TrialRead.__struct_fields__ if f != "status"}
    return TrialRead(**values, status=row.status_at(dt.datetime.now(dt.UTC)))  # type: ignore[arg-type]


async def _trial(db: AsyncSession, ctx: Principal) -> UserTrial | None:
    return await db.scalar(select(UserTrial).where(UserTrial.organization_id == ctx.organization_id))


@get("/", opt={"scope": "billing:read", "problems": (404,)}, operation_id="get_trial", tags=["billing"])
async def get_trial(db: AsyncSession, ctx: Principal) -> TrialRead:
    row = await _trial(db, ctx)
    if row is None:
        raise not_found("trial")
    return _read(row)


@put("/", opt={"scope": "billing:write"}, operation_id="put_trial", tags=["billing"])
async def put_trial(db: AsyncSession, ctx: Principal, data: TrialIn) -> TrialRead:
    if ctx.project_ids is not None:  # the policy refuses it too; this says why
        raise ProblemError(403, "a project-restricted credential cannot change the organization's trial")
    sent = set_fields(data)
    existing = await _trial(db, ctx)
    if existing is None:
        for required in ("plan", "ends_at"):
            if required not in sent:
                raise invalid(required, "required to start a trial")
        sent.setdefault("started_at", await db.scalar(select(func.now())))
    merged: dict[str, Any] = {**({f: getattr(existing, f) for f in TRIAL_FIELDS} if existing else {}), **sent}
    if merged["ends_at"] <= merged["started_at"]:
        raise invalid("ends_at", "must be after started_at")
    if merged.get("converted_at") is not None and merged.get("cancelled_at") is not None:
        field = "cancelled_at" if "cancelled_at" in sent else "converted_at"
        raise invalid(field, "a trial cannot be both converted and cancelled")
    service = UserTrialService(db, ctx)
    row = await (service.update_row(existing.id, sent) if existing else service.create_row(sent))
    return _read(row)


trial_router = Router(path="/v1/trial", route_handlers=[get_trial, put_trial])


ROUTES = Routes(handlers=[trial_router])
