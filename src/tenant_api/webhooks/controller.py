"""/v1/webhooks: an organization's event endpoints, their signing secrets and delivery logs.

Reading and changing webhooks both need ``org:write`` (organization admins and owners) and
a credential not restricted to projects: a webhook URL may itself be a secret, and
deliveries cover the whole organization. The signing secret is shown at creation and at
rotation only. Deliveries carry what the webhook's owning credential (the one that
created it or last enabled it) may read when they are sent; a credential that is revoked,
expires, leaves or loses org:write pauses the webhook (docs/webhooks.md).
"""

import datetime as dt
from typing import Annotated, Literal, cast
from uuid import UUID

import msgspec
from litestar import Router, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from msgspec import Meta
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import Project, Webhook, WebhookAttempt, WebhookDelivery
from tenant_api.errors import ProblemError, conflict, invalid, not_found
from tenant_api.inputs import Input
from tenant_api.resources.base import TenantService, service_for, to_read
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT, by_id
from tenant_api.resources.schemas import set_fields, update_of
from tenant_api.webhooks import events, signing, targets
from tenant_api.routing import Routes

SCOPE = "org:write"
Url = Annotated[str, Meta(min_length=8, max_length=2000)]
EventTypes = Annotated[list[Annotated[str, Meta(min_length=1, max_length=100)]], Meta(min_length=1, max_length=50)]
ProjectIds = Annotated[list[UUID], Meta(min_length=1, max_length=1000)]
Description = Annotated[str, Meta(max_length=500)]
DeliveryStatus = Literal["pending", "delivered", "failed", "skipped"]


class WebhookRead(msgspec.Struct):
    id: UUID
    url: str
    description: str
    event_types: list[str]
    project_ids: list[UUID] | None
    enabled: bool
    status: str
    """active, paused (see paused_reason; PATCH {"enabled": true} resumes it) or disabled."""
    paused_reason: str | None
    paused_at: dt.datetime | None
    owner_token_id: UUID
    """Deliveries carry only what this credential may read when they are sent."""
    secret_rotated_at: dt.datetime | None
    previous_secret_expires_at: dt.datetime | None
    """Until then deliveries are signed with the previous secret too."""
    created_at: dt.datetime
    updated_at: dt.datetime


class WebhookSecret(WebhookRead):
    secret: str
    """The signing secret (whsec_...). Shown in this response only; store it now."""


class WebhookPage(msgspec.Struct):
    items: list[WebhookRead]
    next_cursor: str | None


class WebhookCreate(Input):
    url: Url
    event_types: EventTypes
    """Exact types (job.succeeded), families (job.*) or everything (*): docs/webhooks.md."""
    project_ids: ProjectIds | None = None
    """Only events of these projects (default: every project, and organization-wide events)."""
    description: Description = ""
    enabled: bool = True


WebhookUpdate = update_of(WebhookCreate)


class RotateSecret(Input):
    grace_seconds: Annotated[int, Meta(ge=0, le=7 * 86400)] = 86400
    """How long deliveries are also signed with the old secret (default a day)."""


class DeliveryRead(msgspec.Struct):
    id: UUID
    webhook_id: UUID
    event_id: UUID
    event_type: str
    status: str
    """pending, delivered, failed (gave up), or skipped (not visible to the owning credential)."""
    attempts: int
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None
    redelivered_at: dt.datetime | None
    created_at: dt.datetime


class AttemptRead(msgspec.Struct):
    id: UUID
    attempt: int
    outcome: str
    started_at: dt.datetime
    duration_ms: int | None
    status_code: int | None
    error: str | None
    response_excerpt: str | None


class DeliveryDetail(DeliveryRead):
    attempt_log: list[AttemptRead]


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryRead]
    next_cursor: str | None


def _status(row: Webhook) -> str:
    return "disabled" if not row.enabled else "paused" if row.paused_at is not None else "active"


def webhook_read(row: Webhook) -> WebhookRead:
    return WebhookRead(id=row.id, url=row.url, description=row.description, event_types=list(row.event_types),
                       project_ids=list(row.project_ids) if row.project_ids is not None else None,
                       enabled=row.enabled, status=_status(row), paused_reason=row.paused_reason,
                       paused_at=row.paused_at, owner_token_id=row.owner_token_id,
                       secret_rotated_at=row.secret_rotated_at,
                       previous_secret_expires_at=row.previous_secret_expires_at,
                       created_at=row.created_at, updated_at=row.updated_at)


class WebhookService(TenantService[Webhook]):
    def __init__(self, session: AsyncSession, ctx: Principal, state: State) -> None:
        super().__init__(session, ctx)
        self.settings = state.settings.webhooks
        self.key: bytes = state.webhook_key

    def unrestricted(self) -> None:
        if self.ctx.project_ids is not None:
            raise ProblemError(403, "webhooks belong to the organization: use a credential that is not restricted "
                                    "to projects")

    async def check_projects(self, project_ids: list[UUID] | None) -> list[UUID] | None:
        if project_ids is None:
            return None
        wanted = sorted(set(project_ids))
        found = set(await self.repository.session.scalars(
            select(Project.id).where(Project.organization_id == self.org, Project.id.in_(wanted))))
        missing = [p for p in wanted if p not in found]
        if missing:
            raise invalid("project_ids", f"no project with id {missing[0]}")
        return wanted

    def secret_of(self, row_id: UUID, nonce: bytes) -> str:
        return signing.secret_text(signing.secret_bytes(self.key, self.org, row_id, nonce))

    async def create_webhook(self, data: WebhookCreate) -> WebhookSecret:
        self.unrestricted()
        origin = targets.check_url(data.url, self.settings.allow_private_targets)
        nonce = signing.new_nonce()
        row = await self.create({
            "organization_id": self.org, "url": data.url, "url_origin": origin, "description": data.description,
            "event_types": events.check_event_types(data.event_types),
            "project_ids": await self.check_projects(data.project_ids), "enabled": data.enabled,
            "owner_token_id": self.ctx.token_id, "secret_nonce": nonce,
        })
        await self.repository.session.refresh(row, attribute_names=["created_at", "updated_at"])
        return WebhookSecret(**msgspec.structs.asdict(webhook_read(row)), secret=self.secret_of(row.id, nonce))

    async def update_webhook(self, webhook_id: UUID, data: msgspec.Struct) -> WebhookRead:
        self.unrestricted()
        await self.get_visible(webhook_id)  # 404 before anything about the body
        values = set_fields(data)
        if "url" in values:
            values["url_origin"] = targets.check_url(values["url"], self.settings.allow_private_targets)
        if "event_types" in values:
            values["event_types"] = events.check_event_types(values["event_types"])
        if "project_ids" in values:
            values["project_ids"] = await self.check_projects(values["project_ids"])
        if values.get("enabled") is True:
            # Resuming: the credential in use takes over (deliveries carry what it may read).
            values.update(owner_token_id=self.ctx.token_id, paused_reason=None, paused_at=None)
        return webhook_read(await self.update_row(webhook_id, values))

    async def rotate(self, webhook_id: UUID, grace_seconds: int) -> WebhookSecret:
        self.unrestricted()
        await self.get_visible(webhook_id)
        nonce = signing.new_nonce()
        # With a grace period the current secret stays valid a while as the previous one
        # (the guard_webhook trigger keeps its nonce): receivers switch without losing a delivery.
        values = {"secret_nonce": nonce, "secret_rotated_at": func.now(),
                  "previous_secret_expires_at": func.now() + dt.timedelta(seconds=grace_seconds)
                  if grace_seconds > 0 else None}
        updated = (await self.repository.session.execute(
            update(Webhook).where(Webhook.organization_id == self.org, Webhook.id == webhook_id).values(**values)
            .returning(Webhook.id).execution_options(synchronize_session=False))).first()
        if updated is None:
            raise self.not_writable()
        row = await self.get_visible(webhook_id)
        await self.repository.session.refresh(row)
        return WebhookSecret(**msgspec.structs.asdict(webhook_read(row)), secret=self.secret_of(row.id, nonce))

    async def delete_webhook(self, webhook_id: UUID) -> None:
        self.unrestricted()
        await self.delete_row(webhook_id)

    # --- deliveries ------------------------------------------------------------------------

    async def deliveries(self, webhook_id: UUID, status: str | None, limit: int,
                         cursor: str | None) -> DeliveryPage:
        await self.get_visible(webhook_id)
        stmt = select(WebhookDelivery).where(WebhookDelivery.organization_id == self.org,
                                             WebhookDelivery.webhook_id == webhook_id)
        if status is not None:
            stmt = stmt.where(WebhookDelivery.status == status)
        keyset = by_id(WebhookDelivery, descending=True)  # newest first
        found = (await self.repository.session.scalars(keyset.query(stmt, cursor, limit))).all()
        rows, next_cursor = keyset.page(found, limit)
        return DeliveryPage(items=[to_read(DeliveryRead, r) for r in rows], next_cursor=next_cursor)

    async def delivery(self, webhook_id: UUID, delivery_id: UUID) -> WebhookDelivery:
        await self.get_visible(webhook_id)
        row = await self.repository.session.scalar(select(WebhookDelivery).where(
            WebhookDelivery.organization_id == self.org, WebhookDelivery.webhook_id == webhook_id,
            WebhookDelivery.id == delivery_id))
        if row is None:
            raise not_found("delivery")
        return row

    async def delivery_detail(self, webhook_id: UUID, delivery_id: UUID) -> DeliveryDetail:
        row = await self.delivery(webhook_id, delivery_id)
        attempts = await self.repository.session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.organization_id == self.org,
                                         WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id))
        return DeliveryDetail(**msgspec.structs.asdict(to_read(DeliveryRead, row)),
                              attempt_log=[to_read(AttemptRead, a) for a in attempts])

    async def redeliver(self, webhook_id: UUID, delivery_id: UUID) -> DeliveryRead:
        self.unrestricted()
        row = await self.delivery(webhook_id, delivery_id)
        await self.repository.session.refresh(row, attribute_names=["status"], with_for_update=True)
        if row.status == "pending":
            raise conflict("the delivery is pending already: it is sent (or retried) as soon as it is due",
                           delivery_status=row.status)
        row.status, row.attempts = "pending", 0
        row.next_attempt_at = row.redelivered_at = await self.repository.session.scalar(select(func.now()))
        await self.repository.session.flush()
        await self.repository.session.refresh(row)
        return to_read(DeliveryRead, row)


webhook_service = cast(type[WebhookService], service_for(Webhook, "webhook", {}, WebhookService))


async def provide_webhooks(db: AsyncSession, ctx: Principal, state: State) -> WebhookService:
    return webhook_service(db, ctx, state)


OPT = {"scope": SCOPE}
TAGS = ["webhooks"]


@post("/", opt=OPT, operation_id="create_webhook", tags=TAGS, summary="Register a webhook")
async def create_webhook(webhooks: WebhookService, data: WebhookCreate) -> WebhookSecret:
    return await webhooks.create_webhook(data)


@get("/", opt=OPT, operation_id="list_webhooks", tags=TAGS, summary="List webhooks")
async def list_webhooks(
    webhooks: WebhookService,
    limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Parameter(default=None, max_length=64),
) -> WebhookPage:
    webhooks.unrestricted()
    rows, next_cursor = await webhooks.page(limit=limit, cursor=cursor)
    return WebhookPage(items=[webhook_read(r) for r in rows], next_cursor=next_cursor)


@get("/{webhook_id:uuid}", opt=OPT, operation_id="get_webhook", tags=TAGS, summary="Get a webhook")
async def get_webhook(webhooks: WebhookService, webhook_id: UUID) -> WebhookRead:
    webhooks.unrestricted()
    return webhook_read(await webhooks.get_visible(webhook_id))


@patch("/{webhook_id:uuid}", opt=OPT, operation_id="update_webhook", tags=TAGS, summary="Change a webhook")
async def update_webhook(webhooks: WebhookService, webhook_id: UUID, data: WebhookUpdate) -> WebhookRead:  # type: ignore[valid-type]
    return await webhooks.update_webhook(webhook_id, data)


@delete("/{webhook_id:uuid}", opt=OPT, operation_id="delete_webhook", tags=TAGS, summary="Delete a webhook")
async def delete_webhook(webhooks: WebhookService, webhook_id: UUID) -> None:
    await webhooks.delete_webhook(webhook_id)


@post("/{webhook_id:uuid}/rotate-secret", opt=OPT, operation_id="rotate_webhook_secret", tags=TAGS,
      status_code=200, summary="Replace the signing secret (the old one stays valid for grace_seconds)")
async def rotate_webhook_secret(webhooks: WebhookService, webhook_id: UUID,
                                data: RotateSecret) -> WebhookSecret:
    return await webhooks.rotate(webhook_id, data.grace_seconds)


@get("/{webhook_id:uuid}/deliveries", opt=OPT, operation_id="list_webhook_deliveries", tags=TAGS,
     summary="The delivery log, newest first")
async def list_webhook_deliveries(
    webhooks: WebhookService,
    webhook_id: UUID,
    status: DeliveryStatus | None = None,
    limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Parameter(default=None, max_length=64),
) -> DeliveryPage:
    webhooks.unrestricted()
    return await webhooks.deliveries(webhook_id, status, limit, cursor)


@get("/{webhook_id:uuid}/deliveries/{delivery_id:uuid}", opt=OPT, operation_id="get_webhook_delivery", tags=TAGS,
     summary="A delivery with its attempts (status code, duration, error)")
async def get_webhook_delivery(webhooks: WebhookService, webhook_id: UUID, delivery_id: UUID) -> DeliveryDetail:
    webhooks.unrestricted()
    return await webhooks.delivery_detail(webhook_id, delivery_id)


@post("/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/redeliver", opt=OPT, operation_id="redeliver_webhook",
      tags=TAGS, status_code=202, summary="Send a delivered, failed or skipped delivery again")
async def redeliver_webhook(webhooks: WebhookService, webhook_id: UUID, delivery_id: UUID) -> DeliveryRead:
    return await webhooks.redeliver(webhook_id, delivery_id)


webhooks_router = Router(
    path="/v1/webhooks",
    route_handlers=[create_webhook, list_webhooks, get_webhook, update_webhook, delete_webhook,
                    rotate_webhook_secret, list_webhook_deliveries, get_webhook_delivery, redeliver_webhook],
    dependencies={"webhooks": Provide(provide_webhooks)},
)


ROUTES = Routes(handlers=[webhooks_router])
