"""Conversations (scope area ``conversations``): channels and DMs, members, messages, live stream.

- /v1/conversations                      CRUD (generic), filter project_id, kind
- /v1/conversations/{id}/members         list / add / remove (generic, nested)
- /v1/conversations/{id}/messages        post; history by seq (before= newest first, after= oldest first)
- /v1/conversations/{id}/stream          Server-Sent Events, fed by LISTEN/NOTIFY (see conversation_hub)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal
from uuid import UUID

import anyio
import msgspec
from litestar import Request, Router, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from msgspec import Meta
from sqlalchemy import exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.request import open_context_session, refusal, request_credential
from tenant_api.db.context import Credential, Principal
from tenant_api.db.models import (
    Agent,
    Conversation,
    ConversationMember,
    ConversationMessage,
    OrganizationMembership,
    Project,
)
from tenant_api.inputs import INT64_MAX
from tenant_api.errors import conflict, database_unavailable, invalid, log_failure, not_found
from tenant_api.inputs import Input
from tenant_api.resources.base import Nest, Resource, TenantService, to_read
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tenant_api.resources.conversation_hub import ConversationHub
from tenant_api.resources.schemas import update_of
from tenant_api.routing import Routes

log = logging.getLogger("tenant_api.stream")

READ, WRITE = "conversations:read", "conversations:write"

Kind = Literal["CHANNEL", "DM"]
MemberType = Literal["USER", "AGENT"]
SenderType = Literal["USER", "AGENT", "SYSTEM"]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Body = Annotated[str, Meta(min_length=1, max_length=16000)]  # = the check constraint


# --- conversations ----------------------------------------------------------------------

class ConversationRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    kind: str
    name: str | None
    last_seq: int
    created_at: dt.datetime
    updated_at: dt.datetime


class MemberRef(Input):
    member_type: MemberType
    member_id: UUID


class ConversationCreate(Input):
    project_id: UUID
    kind: Kind
    name: Name | None = None
    members: Annotated[list[MemberRef], Meta(max_length=500)] = []


ConversationUpdate = update_of(ConversationCreate, exclude=("project_id", "kind", "members"))


async def check_members(session: AsyncSession, org: UUID, project_id: UUID,
                        members: Sequence[tuple[str, UUID]], field: Any) -> None:
    """Agents must be agents of the conversation's project, users members of the
    organization, as far as this credential can see them (RLS): else 422 naming the
    field (``field(i)`` for the i-th member). The foreign keys guarantee the same
    underneath, whatever the credential sees."""
    agents = {m for t, m in members if t == "AGENT"}
    users = {m for t, m in members if t == "USER"}
    found: set[UUID] = set()
    if agents:
        found |= set(await session.scalars(select(Agent.id).where(
            Agent.organization_id == org, Agent.project_id == project_id, Agent.id.in_(agents))))
    if users:
        found |= set(await session.scalars(select(OrganizationMembership.user_id).where(
            OrganizationMembership.organization_id == org, OrganizationMembership.user_id.in_(users))))
    for i, (member_type, member_id) in enumerate(members):
        if member_id not in found:
            what = "agent in the conversation's project" if member_type == "AGENT" else "member of the organization"
            raise invalid(field(i), f"no {what} with id {member_id}")


class ConversationService(TenantService[Conversation]):
    """A channel has a name, unique per project (the partial unique index: 409); a DM
    has exactly two members, given at creation and fixed afterwards."""

    async def before_write(self, values: dict[str, Any], existing: Conversation | None) -> dict[str, Any]:
        kind = existing.kind if existing is not None else values["kind"]
        if kind == "CHANNEL" and values.get("name", "" if existing else None) is None:
            raise invalid("name", "a CHANNEL needs a name")
        return values

    async def create_row(self, values: dict[str, Any], scope: dict[str, Any] | None = None) -> Conversation:
        members = [(m.member_type, m.member_id) for m in values.pop("members")]
        if len(set(members)) != len(members):
            raise invalid("members", "lists the same member twice")
        if values["kind"] == "DM" and len(members) != 2:
            raise invalid("members", "a DM has exactly two members")
        users = {m for t, m in members if t == "USER"}
        if values["kind"] == "DM" and users and self.ctx.user_id not in users:
            # A DM naming users belongs to them alone (policies/conversation.sql): its
            # creator could not read it back, so it is refused before anything is written.
            raise invalid("members", "a DM naming users must include you: it belongs to its members alone")
        row = await super().create_row(values, scope)
        await check_members(self.repository.session, self.org, row.project_id, members,
                            lambda i: f"members[{i}].member_id")
        if members:
            await self.repository.session.execute(insert(ConversationMember), [
                {"organization_id": self.org, "project_id": row.project_id, "conversation_id": row.id,
                 "member_type": t, "member_id": m} for t, m in members])
        return row


conversations = Resource(
    name="conversation", path="/v1/conversations", model=Conversation, area="conversations",
    read=ConversationRead, create=ConversationCreate, update=ConversationUpdate,
    parents={"project_id": Project}, filters={"project_id": UUID, "kind": Kind},
    service=ConversationService,
)


# --- members ----------------------------------------------------------------------------

class ConversationMemberRead(msgspec.Struct):
    id: UUID
    conversation_id: UUID
    project_id: UUID
    member_type: str
    member_id: UUID
    created_at: dt.datetime


class MemberCreate(Input):
    member_type: MemberType
    member_id: UUID


class ConversationMemberService(TenantService[ConversationMember]):
    async def _refuse_dm(self, conversation_id: UUID) -> None:
        kind = await self.repository.session.scalar(select(Conversation.kind).where(
            Conversation.organization_id == self.org, Conversation.id == conversation_id))
        if kind == "DM":
            raise conflict("a DM has exactly two members: its members cannot change")

    async def before_write(self, values: dict[str, Any], existing: ConversationMember | None) -> dict[str, Any]:
        await self._refuse_dm(values["conversation_id"])
        await check_members(self.repository.session, self.org, values["project_id"],
                            [(values["member_type"], values["member_id"])], lambda i: "member_id")
        return values

    async def delete_row(self, item_id: UUID, scope: dict[str, Any] | None = None) -> None:
        row = await self.get_visible(item_id, scope)
        await self._refuse_dm(row.conversation_id)
        await self.repository.session.delete(row)
        await self.repository.session.flush()


conversation_members = Resource(
    name="conversation_member", path="/v1/conversations/{conversation_id:uuid}/members",
    model=ConversationMember, area="conversations", read=ConversationMemberRead, create=MemberCreate,
    filters={"member_type": MemberType}, service=ConversationMemberService, tag="conversations",
    nest=Nest(param="conversation_id", model=Conversation, column="conversation_id",
              inherit=("project_id",), label="conversation"),
)


# --- messages ---------------------------------------------------------------------------

class MessageRead(msgspec.Struct):
    id: UUID
    conversation_id: UUID
    project_id: UUID
    seq: int
    sender_type: str
    sender_id: UUID | None
    body: str
    created_at: dt.datetime


class MessageCreate(Input):
    body: Body
    sender_type: SenderType = "USER"
    sender_id: UUID | None = None
    """USER: omitted (the sender is the credential's user); AGENT: an agent of the
    conversation's project; SYSTEM: omitted."""


class MessagePage(msgspec.Struct):
    items: list[MessageRead]
    next_before: int | None
    """Older messages remain: pass as ``before`` (newest-first pages)."""
    next_after: int | None
    """Newer messages remain: pass as ``after`` (oldest-first pages)."""


def _conversation_is(org: UUID | None, conversation_id: UUID) -> Any:
    return (Conversation.organization_id == org) & (Conversation.id == conversation_id)


def _messages_of(org: UUID | None, conversation_id: UUID) -> Any:
    return (ConversationMessage.organization_id == org) & (ConversationMessage.conversation_id == conversation_id)


@post("/messages", opt={"scope": WRITE}, operation_id="post_conversation_message", tags=["conversations"])
async def post_message(db: AsyncSession, ctx: Principal, conversation_id: UUID, data: MessageCreate) -> MessageRead:
    # The seq: the row lock taken here is held until commit, so two posts to one
    # conversation never get the same seq and become visible in seq order. First, so an
    # invisible conversation is a 404 whatever the body says (a refused body rolls back).
    bumped = (await db.execute(
        update(Conversation).where(_conversation_is(ctx.organization_id, conversation_id))
        .values(last_seq=Conversation.last_seq + 1)
        .returning(Conversation.last_seq, Conversation.project_id)
    )).one_or_none()
    if bumped is None:
        raise not_found("conversation")
    seq, project_id = bumped
    if data.sender_type == "USER":
        # The current user, never someone the body names.
        if data.sender_id not in (None, ctx.user_id):
            raise invalid("sender_id", "a USER message is sent by the credential's user: omit sender_id")
        sender_id = ctx.user_id
    elif data.sender_type == "AGENT":
        if data.sender_id is None:
            raise invalid("sender_id", "required for an AGENT message")
        sender_id = data.sender_id
    else:
        if data.sender_id is not None:
            raise invalid("sender_id", "a SYSTEM message has no sender_id")
        sender_id = None
    if data.sender_type == "AGENT":
        is_agent = await db.scalar(select(exists().where(
            Agent.organization_id == ctx.organization_id, Agent.project_id == project_id, Agent.id == sender_id)))
        if not is_agent:
            raise invalid("sender_id", f"no agent in the conversation's project with id {sender_id}")
    row = await db.scalar(insert(ConversationMessage).values(
        organization_id=ctx.organization_id, project_id=project_id, conversation_id=conversation_id,
        seq=seq, sender_type=data.sender_type, sender_id=sender_id, body=data.body,
    ).returning(ConversationMessage))
    return to_read(MessageRead, row)


@get("/messages", opt={"scope": READ}, operation_id="list_conversation_messages", tags=["conversations"])
async def list_messages(
    db: AsyncSession,
    ctx: Principal,
    conversation_id: UUID,
    before: int | None = Parameter(default=None, ge=1, le=INT64_MAX,
                                   description="messages with seq < before, newest first"),
    after: int | None = Parameter(default=None, ge=0, le=INT64_MAX,
                                  description="messages with seq > after, oldest first"),
    limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
) -> MessagePage:
    """History by seq. Neither cursor: the newest messages. ``after``: oldest first from
    there (bounded by ``before`` if given). ``before`` alone: newest first, older than it."""
    if await db.scalar(select(Conversation.id).where(_conversation_is(ctx.organization_id, conversation_id))) is None:
        raise not_found("conversation")
    seq = ConversationMessage.seq
    query = select(ConversationMessage).where(_messages_of(ctx.organization_id, conversation_id))
    if before is not None:
        query = query.where(seq < before)
    if after is not None:
        query = query.where(seq > after)
    ascending = after is not None
    rows = list(await db.scalars(query.order_by(seq.asc() if ascending else seq.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = rows[-1].seq if more else None
    return MessagePage(items=[to_read(MessageRead, r) for r in rows],
                       next_before=None if ascending else next_cursor,
                       next_after=next_cursor if ascending else None)


# --- live stream ------------------------------------------------------------------------

FETCH_BATCH = 200
RETRY_MS = 2000  # tells EventSource how soon to reconnect after the stream ends
UNLISTENED_POLL_SECONDS = 1.0


class _StreamEnd(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


async def _fetch_after(state: State, credential: Credential, request_id: str | None,
                       conversation_id: UUID, cursor: int) -> list[ConversationMessage]:
    """The messages after ``cursor``, read in a short transaction of the subscriber's own:
    begin_request re-checks the credential (revoked, expired, removed, demoted) and RLS
    decides what it may read. Never on the LISTEN connection, never in the stream
    request's own transaction (that one ended when the stream started)."""
    hub: ConversationHub = state.conversation_hub
    async with hub.fetch_slots:
        session, principal = await open_context_session(state, credential, request_id)
        try:
            if not principal.ok:
                raise _StreamEnd(401, refusal(principal))
            if not principal.has_scope(READ):
                raise _StreamEnd(403, f"missing scope: {READ}")
            org = principal.organization_id
            last_seq = await session.scalar(select(Conversation.last_seq).where(_conversation_is(org, conversation_id)))
            if last_seq is None:
                raise _StreamEnd(404, "conversation not found")
            rows: list[ConversationMessage] = []
            if last_seq > cursor:  # the usual heartbeat poll stops here
                rows = list(await session.scalars(
                    select(ConversationMessage)
                    .where(_messages_of(org, conversation_id), ConversationMessage.seq > cursor)
                    .order_by(ConversationMessage.seq).limit(FETCH_BATCH)))
            await session.commit()
            return rows
        finally:
            await session.close()


async def _message_events(state: State, credential: Credential, request_id: str | None,
                          organization_id: UUID, conversation_id: UUID,
                          cursor: int) -> AsyncIterator[ServerSentEventMessage]:
    hub: ConversationHub = state.conversation_hub
    # Subscribe before the first fetch: a message committed in between wakes us.
    sub = hub.subscribe_stream(organization_id, conversation_id)
    deadline = anyio.current_time() + hub.max_stream_seconds
    try:
        yield ServerSentEventMessage(data=None, retry=RETRY_MS)
        while not hub.closed and not hub.draining and anyio.current_time() < deadline:
            try:
                await hub.listen()
            except Exception as exc:  # noqa: BLE001 - the heartbeat poll keeps the stream correct meanwhile
                log_failure(log, "cannot LISTEN; stream falls back to polling", exc)
            sub.wake.clear()
            try:
                # Shielded: a client leaving mid-fetch must not leave a connection half-used.
                with anyio.CancelScope(shield=True):
                    rows = await _fetch_after(state, credential, request_id, conversation_id, cursor)
            except Exception as exc:  # noqa: BLE001 - end the stream cleanly; the client resumes
                end = exc if isinstance(exc, _StreamEnd) else _StreamEnd(503, "stream interrupted; reconnect")
                if not isinstance(exc, _StreamEnd):  # a database outage is no bug: no traceback
                    log.warning("stream fetch failed (request_id=%s): %s", request_id, type(exc).__name__,
                                exc_info=None if database_unavailable(exc) else exc)
                yield ServerSentEventMessage(event="error",
                                             data=msgspec.json.encode({"status": end.status,
                                                                       "detail": end.detail}).decode())
                return
            for row in rows:
                yield ServerSentEventMessage(id=row.seq, event="message",
                                             data=msgspec.json.encode(to_read(MessageRead, row)).decode())
                cursor = row.seq
            if len(rows) == FETCH_BATCH:
                continue  # more are waiting
            if hub.draining:  # set while we fetched (its wake-up may have been cleared above)
                break
            # Without the LISTEN connection (the database restarted, it reconnects within
            # seconds) nothing wakes us: poll every second meanwhile, not every heartbeat.
            with anyio.move_on_after(hub.heartbeat if hub.listening else UNLISTENED_POLL_SECONDS) as waited:
                await sub.wake.wait()
            if waited.cancelled_caught:
                yield ServerSentEventMessage(data=None, comment="keep-alive")
        if hub.draining:  # the server is stopping: say so, the client resumes elsewhere
            yield ServerSentEventMessage(event="error", data=msgspec.json.encode(
                {"status": 503, "detail": "the server is shutting down; reconnect with Last-Event-ID"}).decode())
    finally:
        hub.unsubscribe(sub)


def _json_data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


# What each event of the stream is (OpenAPI 3.1: the media type's schema describes one
# event, its fields as an EventSource sees them; tenant_api.contract: opt["media_types"]).
STREAM_EVENT_SCHEMA: dict[str, Any] = {"oneOf": [
    {"type": "object", "required": ["event", "id", "data"], "properties": {
        "event": {"const": "message"},
        "id": {"type": "string", "description": "the message's seq: send it as Last-Event-ID to resume"},
        "data": _json_data({"$ref": "#/components/schemas/MessageRead"}),
        "retry": {"type": "integer"}}},
    {"type": "object", "required": ["event", "data"], "description": "the stream ends after it", "properties": {
        "event": {"const": "error"},
        "id": {"type": "string"},
        "data": _json_data({"type": "object", "required": ["status", "detail"], "properties": {
            "status": {"type": "integer", "description": "401, 403, 404; 503: reconnect with Last-Event-ID"},
            "detail": {"type": "string"}}}),
        "retry": {"type": "integer"}}},
]}


@get("/stream", opt={"scope": READ, "media_types": {"text/event-stream": STREAM_EVENT_SCHEMA}},
     operation_id="stream_conversation", tags=["conversations"], media_type="text/event-stream")
async def stream_conversation(
    request: Request,
    state: State,
    db: AsyncSession,
    ctx: Principal,
    conversation_id: UUID,
    last_event_id: int | None = Parameter(header="Last-Event-ID", default=None, ge=0, le=INT64_MAX,
                                          description="resume after this seq (sent by EventSource on reconnect)"),
    after: int | None = Parameter(default=None, ge=0, le=INT64_MAX,
                                  description="start after this seq (default: only new messages)"),
) -> ServerSentEvent:
    """New messages as Server-Sent Events: ``event: message``, ``id: <seq>``, data = the
    message. Ends with ``event: error`` when the credential stops being valid or the
    conversation disappears, and after ``max_stream_seconds`` (reconnect with Last-Event-ID)."""
    # Visibility (404) is decided here, in the request's own transaction, which ends
    # (commits) when this handler returns: the stream then holds no transaction and no
    # pooled connection between its fetches.
    assert ctx.organization_id is not None
    last_seq = await db.scalar(
        select(Conversation.last_seq).where(_conversation_is(ctx.organization_id, conversation_id)))
    if last_seq is None:
        raise not_found("conversation")
    start = last_event_id if last_event_id is not None else after if after is not None else last_seq
    return ServerSentEvent(_message_events(
        state, request_credential(request), request.scope["state"].get("request_id"),
        ctx.organization_id, conversation_id, min(start, last_seq)))


# A conversation's messages and stream, under its path: in the conversations router.
conversations.actions.append(Router(path="/{conversation_id:uuid}",
                                    route_handlers=[post_message, list_messages, stream_conversation]))
ROUTES = Routes(resources=[conversations, conversation_members])
