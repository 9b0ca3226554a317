"""/v1/audit: the auditor's API (audit:read). Reads only; nothing here changes anything.

* ``GET /v1/audit/events``: one timeline of what tokens did: data changes (written by
  the audit trigger), requests (usage records) and refused credentials (security
  events), linked by request id. JSON pages, or with ``Accept: text/csv`` /
  ``application/x-ndjson`` every matching event, streamed.
* ``GET /v1/audit/usage``: per token and hour/day: requests, errors, refusals,
  distinct IPs, last seen.
* ``GET /v1/audit/verify``: the tamper-evidence check (audit/sealing.py).

Pagination and export order by (txid, id) and only show events written by
transactions older than every transaction still running (see revision 0008): a page
boundary is never crossed later by an event committing late, so paging is stable while
new events arrive. An event becomes listable once the transactions that were running
when it was written have ended (normally within milliseconds).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.audit import sealing
from tenant_api.auth.request import open_context_session
from tenant_api.db.context import Principal
from tenant_api.errors import invalid
from tenant_api.inputs import Timestamp, plain
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT, CursorCodec
from tenant_api.routing import Routes

EXPORT_BATCH = 1000
CSV = "text/csv"
NDJSON = "application/x-ndjson"


class AuditEvent(msgspec.Struct):
    id: UUID
    occurred_at: dt.datetime
    kind: Literal["change", "request", "security"]
    token_id: UUID | None
    user_id: UUID | None
    request_id: str | None
    # kind = change (the audit trigger's row)
    table_name: str | None
    row_id: UUID | None
    action: str | None
    changes: dict[str, Any] | None
    # kind = request | security (the usage record)
    method: str | None
    route: str | None
    status: int | None
    duration_ms: float | None
    client_ip: str | None
    user_agent: str | None
    prefix: str | None
    reason: str | None
    request_count: int | None
    """Requests the record stands for: 1, or more for a refused token's security event
    (one per token, reason and minute; its first request's details)."""


class AuditEventPage(msgspec.Struct):
    items: list[AuditEvent]
    next_cursor: str | None
    resume_cursor: str | None
    """After the last item even on the last page: pass it as cursor later to get only
    the events that arrived since (nothing is ever inserted behind it)."""


class UsageBucket(msgspec.Struct):
    token_id: UUID
    bucket: dt.datetime
    requests: int
    errors: int
    """Failed requests: 4xx other than 401/403, and 5xx."""
    refused: int
    """401 and 403: missing scope, or the token refused (expired, revoked, not a member)."""
    distinct_ips: int
    last_seen: dt.datetime


class UsageReport(msgspec.Struct):
    since: dt.datetime
    until: dt.datetime
    bucket: str
    items: list[UsageBucket]


class VerifyProblem(msgspec.Struct):
    problem: str
    event_id: UUID | None
    seal_seq: int | None
    detail: str


class VerifyReport(msgspec.Struct):
    status: Literal["intact", "tampered"]
    verified_events: int
    verified_blocks: int
    purged_events: int
    unsealed_events: int
    """Not sealed yet: not verifiable until the next seal (the scheduler / `tenant-api audit seal`)."""
    first_problem: VerifyProblem | None
    problems: list[VerifyProblem]
    head_seq: int | None
    """The newest seal. Keep (head_seq, head_digest) outside the database: a later verify
    that no longer reaches that digest at that seq proves the chain was rewritten."""
    head_digest: str | None
    head_sealed_at: dt.datetime | None


# -- the event query -----------------------------------------------------------------------

_COLUMNS = (
    "id, txid, occurred_at, kind, token_id, user_id, request_id, table_name, row_id, action,"
    " changes, method, route, status, duration_ms, host(client_ip) as client_ip, user_agent, prefix, reason,"
    " request_count"
)
_STATUS_CLASS = Literal["1xx", "2xx", "3xx", "4xx", "5xx"]


# (txid, id): the order events are read and exported in.
EVENT_CURSOR = CursorCodec(("u64", "uuid"))


def _event_query(org: UUID, filters: dict[str, Any], *, horizon: int | None, cursor: tuple[int, UUID] | None,
                 limit: int) -> tuple[Any, dict[str, Any]]:
    where = ["organization_id = :org"]
    params: dict[str, Any] = {"org": org, "limit": limit}
    # Only final events: written by transactions older than any still running.
    where.append("txid < cast(:horizon as xid8)" if horizon is not None
                 else "txid < pg_snapshot_xmin(pg_current_snapshot())")
    if horizon is not None:
        params["horizon"] = horizon
    if cursor:
        where.append("(txid, id) > (cast(:c_txid as xid8), :c_id)")
        params.update(c_txid=cursor[0], c_id=cursor[1])
    for name, column in (("token_id", "token_id"), ("user_id", "user_id"), ("table", "table_name"),
                         ("action", "action"), ("kind", "kind"), ("request_id", "request_id")):
        if filters.get(name) is not None:
            where.append(f"{column} = :{name}")
            params[name] = filters[name]
    if filters.get("status"):
        low = int(filters["status"][0]) * 100
        where.append("status between :status_low and :status_high")
        params.update(status_low=low, status_high=low + 99)
    if filters.get("since"):
        where.append("occurred_at >= :since")
        params["since"] = filters["since"]
    if filters.get("until"):
        where.append("occurred_at < :until")
        params["until"] = filters["until"]
    # Fixed column list and conditions of our own; every value is a bind parameter.
    sql = f"select {_COLUMNS} from audit_event where {' and '.join(where)} order by txid, id limit :limit"  # noqa: S608
    return text(sql), params


def _to_event(row: Any) -> AuditEvent:
    data = dict(row._mapping)
    data.pop("txid")
    if isinstance(data["duration_ms"], Decimal):
        data["duration_ms"] = float(data["duration_ms"])
    return msgspec.convert(data, AuditEvent)


# -- export ----------------------------------------------------------------------------------

_CSV_FIELDS = list(AuditEvent.__struct_fields__)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        # Spreadsheets run cells starting with these as formulas; user agents are the
        # client's own text (OWASP CSV injection).
        return "'" + value
    return value


def _csv_chunk(events: list[AuditEvent], header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(_CSV_FIELDS)
    for event in events:
        writer.writerow([_csv_cell(getattr(event, f)) for f in _CSV_FIELDS])
    return out.getvalue()


async def _export(request: Request, state: State, org: UUID, filters: dict[str, Any], horizon: int,
                  media_type: str) -> AsyncIterator[bytes]:
    """Every matching event, in keyset batches, each read in a short transaction of its
    own as the request's credential (the request's transaction has committed by the time
    the body streams). The horizon is fixed at the start, so the export is exactly the
    final events of that moment, never a row twice or missing, however long it takes.
    A credential revoked meanwhile stops the export with an error (the body is cut)."""
    credential = request.scope["state"]["credential"]
    request_id = request.scope["state"].get("request_id")
    cursor: tuple[int, UUID] | None = None
    first = True
    while True:
        session, principal = await open_context_session(state, credential, request_id)
        try:
            if not principal.ok or not principal.has_scope("audit:read"):
                raise NotAuthorizedException("the credential was refused during the export")
            query, params = _event_query(org, filters, horizon=horizon, cursor=cursor, limit=EXPORT_BATCH)
            rows = (await session.execute(query, params)).all()
        finally:
            await session.close()  # a read: nothing to commit
        events = [_to_event(r) for r in rows]
        if media_type == CSV:
            chunk = _csv_chunk(events, header=first)
            if chunk:
                yield chunk.encode()
        elif events:
            yield b"".join(msgspec.json.encode(e) + b"\n" for e in events)
        first = False
        if len(rows) < EXPORT_BATCH:
            return
        cursor = (rows[-1].txid, rows[-1].id)


# -- handlers -------------------------------------------------------------------------------


_EXPORTS = {  # streamed instead of the JSON page (tenant_api.contract: opt["media_types"])
    "text/csv": {"type": "string", "description": "Every matching event, one CSV row each, with a header row."},
    "application/x-ndjson": {"type": "string",
                             "description": "Every matching event, one AuditEvent JSON object per line."},
}


@get("/events", opt={"scope": "audit:read", "media_types": _EXPORTS}, operation_id="list_audit_events",
     tags=["audit"],
     responses={200: ResponseSpec(AuditEventPage, description="JSON page; `Accept: text/csv` or "
                                  "`application/x-ndjson` streams every matching event instead")})
async def list_events(
    request: Request,
    state: State,
    db: AsyncSession,
    ctx: Principal,
    limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Parameter(default=None, max_length=64),
    token_id: UUID | None = None,
    user_id: UUID | None = None,
    table: str | None = Parameter(default=None, max_length=63),
    action: Literal["INSERT", "UPDATE", "DELETE"] | None = None,
    kind: Literal["change", "request", "security"] | None = None,
    status: _STATUS_CLASS | None = Parameter(default=None, description="status class of requests, e.g. 4xx"),
    request_id: str | None = Parameter(default=None, max_length=64),
    since: Timestamp | None = None,
    until: Timestamp | None = None,
) -> Response:
    assert ctx.organization_id is not None
    filters = {"token_id": token_id, "user_id": user_id, "table": table, "action": action, "kind": kind,
               "status": status, "request_id": request_id, "since": plain(since), "until": plain(until)}
    media_type = request.accept.best_match(["application/json", CSV, NDJSON], default="application/json")
    if media_type in (CSV, NDJSON):
        horizon = (await db.execute(text("select pg_snapshot_xmin(pg_current_snapshot())"))).scalar_one()
        filename = f"audit-events.{'csv' if media_type == CSV else 'ndjson'}"
        return Stream(_export(request, state, ctx.organization_id, filters, horizon, media_type),
                      media_type=media_type,
                      headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    query, params = _event_query(ctx.organization_id, filters, horizon=None,
                                 cursor=EVENT_CURSOR.decode(cursor) if cursor else None, limit=limit + 1)
    rows = (await db.execute(query, params)).all()
    page = rows[:limit]
    resume = EVENT_CURSOR.encode(page[-1].txid, page[-1].id) if page else cursor
    return Response(AuditEventPage(items=[_to_event(r) for r in page],
                                   next_cursor=resume if len(rows) > limit else None, resume_cursor=resume))


_USAGE = text(
    "select token_id, date_trunc(:bucket, occurred_at, 'UTC') as bucket, sum(request_count)::bigint as requests,"
    " count(*) filter (where status >= 400 and status not in (401, 403)) as errors,"
    " coalesce(sum(request_count) filter (where status in (401, 403)), 0)::bigint as refused,"
    " count(distinct client_ip) as distinct_ips, max(occurred_at) as last_seen"
    " from token_usage where organization_id = :org and occurred_at >= :since and occurred_at < :until"
    " and (cast(:token_id as uuid) is null or token_id = :token_id)"
    " group by 1, 2 order by 2, 1"
)
_MAX_RANGE = {"hour": dt.timedelta(days=31), "day": dt.timedelta(days=366)}


@get("/usage", opt={"scope": "audit:read"}, operation_id="audit_usage", tags=["audit"])
async def usage(
    db: AsyncSession,
    ctx: Principal,
    bucket: Literal["hour", "day"] = "day",
    since: Timestamp | None = Parameter(default=None, description="default: until - 7 days"),
    until: Timestamp | None = Parameter(default=None, description="default: now"),
    token_id: UUID | None = None,
) -> UsageReport:
    # Timestamps carry a time zone (inputs.decode_timestamp): the range is all there is to check.
    end = plain(until) or dt.datetime.now(dt.UTC)
    try:
        start = plain(since) or end - dt.timedelta(days=7)
    except OverflowError:
        raise invalid("since", "required when until is within 7 days of the year 1") from None
    if start >= end:
        raise invalid("since", "must be before until")
    if end - start > _MAX_RANGE[bucket]:
        raise invalid("since", f"at most {_MAX_RANGE[bucket].days} days of {bucket} buckets")
    rows = (await db.execute(_USAGE, {"bucket": bucket, "org": ctx.organization_id, "since": start,
                                      "until": end, "token_id": token_id})).all()
    return UsageReport(since=start, until=end, bucket=bucket,
                       items=[msgspec.convert(dict(r._mapping), UsageBucket) for r in rows])


@get("/verify", opt={"scope": "audit:read"}, operation_id="audit_verify", tags=["audit"])
async def verify(
    db: AsyncSession,
    ctx: Principal,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
) -> VerifyReport:
    assert ctx.organization_id is not None
    report = await sealing.verify(db, ctx.organization_id, plain(since), plain(until))
    problems = [VerifyProblem(p.problem, p.event_id, p.seal_seq, p.detail) for p in report.problems]
    return VerifyReport(
        status=report.status,  # type: ignore[arg-type]
        verified_events=report.verified_events,
        verified_blocks=report.verified_blocks,
        purged_events=report.purged_events,
        unsealed_events=report.unsealed_events,
        first_problem=problems[0] if problems else None,
        problems=problems,
        head_seq=report.head_seq,
        head_digest=report.head_digest,
        head_sealed_at=report.head_sealed_at,
    )


audit_router = Router(path="/v1/audit", route_handlers=[list_events, usage, verify])


ROUTES = Routes(handlers=[audit_router])
