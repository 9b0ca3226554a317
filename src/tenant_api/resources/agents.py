"""Agents and what belongs to them (scope area ``agents``): the agent itself, the
organization's agent templates, an agent's profile (1:1), email rules and
conversation mappings (nested under /v1/agents/{agent_id}/...)."""

import datetime as dt
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

import msgspec
from advanced_alchemy.filters import StatementFilter
from litestar import get, put
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.context import Principal
from tenant_api.db.models import Agent, AgentConversation, AgentEmailRule, AgentProfile, AgentTemplate, Project
from tenant_api.errors import ProblemError, conflict, invalid, not_found
from tenant_api.inputs import Input
from tenant_api.db.models.base import uuid7
from tenant_api.resources.base import Nest, Resource, TenantService, WriteQueries, to_read
from tenant_api.resources.pagination import CursorCodec, Keyset
from tenant_api.resources.schemas import update_of
from tenant_api.routing import Routes

AgentStatus = Literal["active", "paused", "archived"]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
AgentType = Annotated[str, Meta(min_length=1, max_length=100)]


# -- profile fields, shared by PUT /profile and a template's default profile ---------

DisplayName = Annotated[str, Meta(min_length=1, max_length=200)]
AvatarUrl = Annotated[str, Meta(min_length=1, max_length=2048)]
Voice = Annotated[str, Meta(min_length=1, max_length=100)]
Role = Annotated[str, Meta(min_length=1, max_length=200)]
Bio = Annotated[str, Meta(max_length=5000)]
PROFILE_FIELDS = ("display_name", "avatar_url", "voice", "role", "bio")


def check_avatar_url(field: str, url: str | None) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise invalid(field, "must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise invalid(field, "must not carry credentials")


class ProfileIn(Input):
    """PUT replaces the whole profile: fields left out are cleared."""

    display_name: DisplayName
    avatar_url: AvatarUrl | None = None
    voice: Voice | None = None
    role: Role | None = None
    bio: Bio = ""


class ProfileDefaults(Input, omit_defaults=True):
    """A template's default profile; display_name defaults to the new agent's name."""

    display_name: DisplayName | None = None
    avatar_url: AvatarUrl | None = None
    voice: Voice | None = None
    role: Role | None = None
    bio: Bio | None = None


class ProfileRead(msgspec.Struct):
    id: UUID
    agent_id: UUID
    project_id: UUID
    display_name: str
    avatar_url: str | None
    voice: str | None
    role: str | None
    bio: str
    created_at: dt.datetime
    updated_at: dt.datetime


async def visible_agent(db: AsyncSession, ctx: Principal, agent_id: UUID) -> Agent:
    agent = await db.scalar(select(Agent).where(Agent.organization_id == ctx.organization_id, Agent.id == agent_id))
    if agent is None:
        raise not_found("agent")
    return agent


async def write_profile(db: AsyncSession, agent: Agent, fields: dict[str, Any]) -> AgentProfile:
    """Create or replace the agent's profile in one statement (no race between two PUTs)."""
    stmt: Any = pg_insert(AgentProfile).values(
        organization_id=agent.organization_id, project_id=agent.project_id, agent_id=agent.id, **fields
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["organization_id", "agent_id"], set_={k: stmt.excluded[k] for k in fields}
    ).returning(AgentProfile)
    result = await db.scalars(select(AgentProfile).from_statement(stmt), execution_options={"populate_existing": True})
    return result.one()


@get("/{agent_id:uuid}/profile", opt={"scope": "agents:read"}, operation_id="get_agent_profile", tags=["agents"])
async def get_profile(db: AsyncSession, ctx: Principal, agent_id: UUID) -> ProfileRead:
    """404 "agent profile not found" while the agent has none (no invented defaults)."""
    agent = await visible_agent(db, ctx, agent_id)
    row = await db.scalar(
        select(AgentProfile).where(AgentProfile.organization_id == agent.organization_id,
                                   AgentProfile.agent_id == agent.id)
    )
    if row is None:
        raise not_found("agent profile")
    return to_read(ProfileRead, row)


@put("/{agent_id:uuid}/profile", opt={"scope": "agents:write"}, operation_id="put_agent_profile", tags=["agents"])
async def put_profile(db: AsyncSession, ctx: Principal, agent_id: UUID, data: ProfileIn) -> ProfileRead:
    agent = await visible_agent(db, ctx, agent_id)
    check_avatar_url("avatar_url", data.avatar_url)
    return to_read(ProfileRead, await write_profile(db, agent, msgspec.structs.asdict(data)))




# -- agent templates -----------------------------------------------------------------

Slug = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",
                           description="lowercase letters, digits and single hyphens")]
Tool = Annotated[str, Meta(min_length=1, max_length=100)]
Tools = Annotated[list[Tool], Meta(max_length=100)]


class TemplateRead(msgspec.Struct):
    id: UUID
    slug: str
    name: str
    category: str
    tools: list[str]
    default_profile: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class TemplateCreate(Input):
    slug: Slug
    name: Name
    category: AgentType
    tools: Tools = []
    default_profile: ProfileDefaults = msgspec.field(default_factory=ProfileDefaults)


TemplateUpdate = update_of(TemplateCreate)


class AgentTemplateService(TenantService[AgentTemplate]):
    """Templates are organization-wide: a project-restricted credential reads them but
    may not change them (the policy refuses it too; this makes it a clear 403 rather
    than an UPDATE or DELETE that matches no row)."""

    def _check_unrestricted(self) -> None:
        if self.ctx.project_ids is not None:
            raise ProblemError(403, "a project-restricted credential cannot change agent templates")

    async def delete_row(self, item_id: UUID, scope: dict[str, Any] | None = None) -> None:
        self._check_unrestricted()
        await super().delete_row(item_id, scope)

    async def before_write(self, values: dict[str, Any], existing: AgentTemplate | None) -> dict[str, Any]:
        self._check_unrestricted()
        slug = values.get("slug")
        if slug is not None and (existing is None or slug != existing.slug):
            if await self.get_one_or_none(organization_id=self.org, slug=slug) is not None:
                raise conflict(f"an agent template with slug {slug!r} already exists", field="slug")
        if "tools" in values and len(set(values["tools"])) != len(values["tools"]):
            raise invalid("tools", "lists a tool more than once")
        if isinstance(values.get("default_profile"), ProfileDefaults):
            check_avatar_url("default_profile.avatar_url", values["default_profile"].avatar_url)
            values["default_profile"] = msgspec.to_builtins(values["default_profile"])
        return values


agent_templates = Resource(
    name="agent_template", path="/v1/agent-templates", model=AgentTemplate, area="agents",
    read=TemplateRead, create=TemplateCreate, update=TemplateUpdate,
    filters={"category": str, "slug": str}, service=AgentTemplateService, tag="agents",
)


# -- agents ----------------------------------------------------------------------------


class AgentRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    name: str
    type: str
    status: str
    template_id: UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


class AgentCreate(Input):
    project_id: UUID
    name: Name
    # Left out: the template's category if template_id is given, else "assistant".
    type: AgentType | UnsetType = UNSET
    status: AgentStatus = "active"
    template_id: UUID | None = None
    """Start from this template: type from its category, a profile from its default profile."""


AgentUpdate = update_of(AgentCreate, exclude=("project_id", "template_id"))


class AgentService(TenantService[Agent]):
    """On the fast write path: everything on self.connection(), no ORM."""

    async def create_row(self, values: dict[str, Any], scope: dict[str, Any] | None = None) -> Agent:
        template = None
        if values.get("template_id") is not None:
            # None here (invisible or absent) becomes a 422 naming template_id in check_parents
            templates = WriteQueries.of(AgentTemplate)
            row = await templates.select(await self.connection(), self.org, values["template_id"], {})
            template = templates.instance(row) if row is not None else None
        if values.get("type", UNSET) is UNSET:
            values = {**values, "type": template.category if template else "assistant"}
        agent = await super().create_row(values, scope)
        if template is not None:
            # same transaction as the agent: both or neither (a new agent has no profile yet)
            defaults = template.default_profile or {}
            fields = {f: defaults.get(f) for f in PROFILE_FIELDS}
            fields["display_name"] = fields["display_name"] or agent.name
            fields["bio"] = fields["bio"] or ""
            await WriteQueries.of(AgentProfile).insert(await self.connection(), {
                "id": uuid7(), "organization_id": agent.organization_id, "project_id": agent.project_id,
                "agent_id": agent.id, **fields})
        return agent


agents = Resource(
    name="agent", path="/v1/agents", model=Agent, area="agents",
    read=AgentRead, create=AgentCreate, update=AgentUpdate,
    parents={"project_id": Project, "template_id": AgentTemplate},
    filters={"project_id": UUID, "status": AgentStatus, "type": str, "template_id": UUID},
    service=AgentService, write_path="fast",
)


# -- email rules -------------------------------------------------------------------------

PATTERN_MAX = 500
Direction = Literal["inbound", "outbound"]
RuleAction = Literal["forward", "reply", "drop", "assign"]
Pattern = Annotated[str, Meta(min_length=1, max_length=PATTERN_MAX,
                              description="a Python regular expression, matched against the address")]
Target = Annotated[str, Meta(min_length=1, max_length=320)]
Priority = Annotated[int, Meta(ge=0, le=1_000_000, description="lower runs first")]
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


class EmailRuleRead(msgspec.Struct):
    id: UUID
    agent_id: UUID
    project_id: UUID
    direction: str
    pattern: str
    action: str
    target: str | None
    priority: int
    enabled: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class EmailRuleCreate(Input):
    direction: Direction
    pattern: Pattern
    action: RuleAction
    target: Target | None = None
    """forward: the address to forward to; assign: the assignee; reply: optional; drop: none."""
    priority: Priority = 100
    enabled: bool = True


EmailRuleUpdate = update_of(EmailRuleCreate)


RULE_ORDER = Keyset((AgentEmailRule.priority, AgentEmailRule.id), CursorCodec(("u32", "uuid")))


class AgentEmailRuleService(TenantService[AgentEmailRule]):
    async def before_write(self, values: dict[str, Any], existing: AgentEmailRule | None) -> dict[str, Any]:
        if "pattern" in values:
            try:
                re.compile(values["pattern"])
            except (re.error, RecursionError, OverflowError, ValueError) as exc:
                raise invalid("pattern", f"not a valid regular expression: {exc}") from None
        action = values.get("action", existing.action if existing else None)
        target = values["target"] if "target" in values else (existing.target if existing else None)
        if action == "drop" and target is not None:
            raise invalid("target", "must be null for action drop")
        if action in ("forward", "assign") and target is None:
            raise invalid("target", f"is required for action {action}")
        if action == "forward" and not _EMAIL.match(target or ""):
            raise invalid("target", "must be an email address for action forward")
        return values

    async def page(self, *extra: StatementFilter, limit: int, cursor: str | None,
                   **filters: Any) -> tuple[Sequence[AgentEmailRule], str | None]:
        """In evaluation order, (priority, id), with a keyset cursor over that pair."""
        rows = await self.list(*extra, statement=RULE_ORDER.query(select(AgentEmailRule), cursor, limit),
                               organization_id=self.org, **{k: v for k, v in filters.items() if v is not None})
        return RULE_ORDER.page(rows, limit)


AGENT_NEST = Nest(param="agent_id", model=Agent, column="agent_id", inherit=("project_id",), label="agent")

agent_email_rules = Resource(
    name="agent_email_rule", path="/v1/agents/{agent_id:uuid}/email-rules", model=AgentEmailRule,
    area="agents", read=EmailRuleRead, create=EmailRuleCreate, update=EmailRuleUpdate,
    filters={"direction": Direction, "action": RuleAction, "enabled": bool},
    service=AgentEmailRuleService, nest=AGENT_NEST, tag="agents",
    read_path="orm",  # evaluation order, (priority, id): its own page
    write_path="fast",  # its rules read only the values and the row being changed
)


# -- conversation mappings ---------------------------------------------------------------

ConversationKey = Annotated[str, Meta(min_length=1, max_length=200)]
ExternalId = Annotated[str, Meta(min_length=1, max_length=500)]


class AgentConversationRead(msgspec.Struct):
    id: UUID
    agent_id: UUID
    project_id: UUID
    conversation_key: str
    external_conversation_id: str
    created_at: dt.datetime
    updated_at: dt.datetime


class AgentConversationCreate(Input):
    conversation_key: ConversationKey
    external_conversation_id: ExternalId


# The key is the mapping's identity: to re-key, delete and create.
AgentConversationUpdate = update_of(AgentConversationCreate, exclude=("conversation_key",))


class AgentConversationService(TenantService[AgentConversation]):
    async def before_write(self, values: dict[str, Any], existing: AgentConversation | None) -> dict[str, Any]:
        if existing is None:
            taken = await self.get_one_or_none(organization_id=self.org, agent_id=values["agent_id"],
                                               conversation_key=values["conversation_key"])
            if taken is not None:
                raise conflict(f"this agent already maps conversation_key {values['conversation_key']!r}",
                               field="conversation_key", existing_id=str(taken.id))
        return values


agent_conversations = Resource(
    name="agent_conversation", path="/v1/agents/{agent_id:uuid}/conversations", model=AgentConversation,
    area="agents", read=AgentConversationRead, create=AgentConversationCreate, update=AgentConversationUpdate,
    filters={"conversation_key": str}, service=AgentConversationService, nest=AGENT_NEST, tag="agents",
)


# An agent's profile lives under the agent's path: in its router.
agents.actions.extend([get_profile, put_profile])
ROUTES = Routes(resources=[agents, agent_templates, agent_email_rules, agent_conversations])
