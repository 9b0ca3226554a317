"""Notifications (scope area ``notifications``): a member's device push tokens and
notification preferences. Both are per user: only that user sees or changes them
(policies/device_token.sql, policies/notification_preference.sql); the user comes
from the credential, never from the body."""

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from advanced_alchemy.filters import StatementFilter
from litestar import Router, get, put
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import DeviceToken, NotificationPreference
from tenant_api.inputs import Input
from tenant_api.resources.base import Resource, TenantService
from tenant_api.routing import Routes

# -- device tokens -----------------------------------------------------------------------

Platform = Literal["ios", "android", "web"]


class DeviceTokenRead(msgspec.Struct):
    id: UUID
    user_id: UUID
    platform: str
    token: str
    created_at: dt.datetime
    updated_at: dt.datetime
    """When the token was last registered."""


class DeviceTokenCreate(Input):
    platform: Platform
    token: Annotated[str, Meta(min_length=1, max_length=4096)]


class DeviceTokenService(TenantService[DeviceToken]):
    """The explicit user filter next to the organization filter; RLS enforces both."""

    async def page(self, *extra: StatementFilter, limit: int, cursor: str | None,
                   **filters: Any) -> tuple[Sequence[DeviceToken], str | None]:
        return await super().page(*extra, limit=limit, cursor=cursor, **filters, user_id=self.ctx.user_id)

    async def get_visible(self, item_id: UUID, scope: dict[str, Any] | None = None) -> DeviceToken:
        return await super().get_visible(item_id, {**(scope or {}), "user_id": self.ctx.user_id})

    async def create_row(self, values: dict[str, Any], scope: dict[str, Any] | None = None) -> DeviceToken:
        """Idempotent: apps register their token at every start. The same (user, token)
        again returns the same row (platform updated), in one statement, race-free."""
        stmt: Any = pg_insert(DeviceToken).values(organization_id=self.org, user_id=self.ctx.user_id, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["organization_id", "user_id", "token"], set_={"platform": stmt.excluded.platform}
        ).returning(DeviceToken)
        db = self.repository.session
        return (await db.scalars(select(DeviceToken).from_statement(stmt),
                                 execution_options={"populate_existing": True})).one()


device_tokens = Resource(
    name="device_token", path="/v1/device-tokens", model=DeviceToken, area="notifications",
    read=DeviceTokenRead, create=DeviceTokenCreate, filters={"platform": Platform},
    service=DeviceTokenService,
    read_path="orm",  # a user's own tokens only: its own page and get
)


# -- notification preferences ----------------------------------------------------------------

CHANNELS = ("email", "push", "sms", "in_app")
# Without a stored row a channel is on, except sms (it costs money: opt-in).
DEFAULT_ENABLED = {"email": True, "push": True, "sms": False, "in_app": True}
EventName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")]


class ChannelPreference(Input):
    enabled: bool
    """The channel's master switch."""
    events: Annotated[dict[EventName, bool], Meta(max_length=200)] = {}
    """Per event: false mutes that event on this channel; events not listed are on."""


class PreferencesRead(msgspec.Struct):
    email: ChannelPreference
    push: ChannelPreference
    sms: ChannelPreference
    in_app: ChannelPreference


class PreferencesIn(Input):
    """The channels sent are replaced; channels left out keep their settings."""

    email: ChannelPreference | UnsetType = UNSET
    push: ChannelPreference | UnsetType = UNSET
    sms: ChannelPreference | UnsetType = UNSET
    in_app: ChannelPreference | UnsetType = UNSET


async def _read_preferences(db: AsyncSession, ctx: Principal) -> PreferencesRead:
    rows = await db.scalars(select(NotificationPreference).where(
        NotificationPreference.organization_id == ctx.organization_id,
        NotificationPreference.user_id == ctx.user_id))
    stored = {r.channel: ChannelPreference(enabled=r.enabled, events=r.events) for r in rows}
    return PreferencesRead(**{c: stored.get(c) or ChannelPreference(enabled=DEFAULT_ENABLED[c]) for c in CHANNELS})


@get("/", opt={"scope": "notifications:read"}, operation_id="get_notification_preferences", tags=["notifications"])
async def get_preferences(db: AsyncSession, ctx: Principal) -> PreferencesRead:
    """The current user's preferences, every channel (defaults where never set)."""
    return await _read_preferences(db, ctx)


@put("/", opt={"scope": "notifications:write"}, operation_id="put_notification_preferences",
     tags=["notifications"])
async def put_preferences(db: AsyncSession, ctx: Principal, data: PreferencesIn) -> PreferencesRead:
    rows = [
        {"organization_id": ctx.organization_id, "user_id": ctx.user_id, "channel": c,
         "enabled": pref.enabled, "events": pref.events}
        for c in CHANNELS if (pref := getattr(data, c)) is not UNSET
    ]
    if rows:
        stmt = pg_insert(NotificationPreference).values(rows)
        await db.execute(stmt.on_conflict_do_update(
            index_elements=["organization_id", "user_id", "channel"],
            set_={"enabled": stmt.excluded.enabled, "events": stmt.excluded.events},
        ))
    return await _read_preferences(db, ctx)


notification_preferences_router = Router(path="/v1/notification-preferences",
                                         route_handlers=[get_preferences, put_preferences])


ROUTES = Routes(resources=[device_tokens], handlers=[notification_preferences_router])
