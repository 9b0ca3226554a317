"""The request's path up to the handler.

1. The edge middleware (edge.py; no database): reads ``Authorization: Bearer ...``,
   checks an API token's format and checksum or a session JWT's signature and expiry,
   and stores the resulting Credential. Anything malformed stops there with 401. Routes
   marked ``opt={"public": True}`` (signup, login, health, docs) skip it. The check runs
   inside ``RefusedCredentials.guard`` (ops.ratelimit): an address that sent too many
   refused credentials gets 429 before its next unknown credential is parsed or looked up.
2. ``provide_db`` (one transaction per request): opens the session, begins the
   transaction (which runs auth.begin_request and sets the context, see db.context),
   refuses unknown/expired/revoked credentials with 401 and a missing scope with 403
   naming it, yields the session to the handler, then commits. The commit is ours: if it
   fails the client gets a problem response, never a 2xx. Any exception rolls back.
3. ``provide_ctx``: the Principal the handler and services work as.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
import time
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.types import Scope
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.util import greenlet_spawn

from tenant_api import idempotency
from tenant_api.auth.credentials import (
    SessionCodec,
    expired_session,
    refused_prefix,
)
from tenant_api.db.context import BEGIN_REQUEST_SQL, RESTRICTED_ROLE_SQL, Credential, Principal
from tenant_api.errors import database_unavailable


_REFUSED = {
    "unknown": "unknown credential",
    "revoked": "credential revoked",
    "expired": "credential expired",
    "not_member": "the credential's user is no longer a member of its organization",
}


def _route_opt(scope: Scope) -> dict[str, Any]:
    handler = scope.get("route_handler")
    return getattr(handler, "opt", {}) or {}


def is_public(handler: object) -> bool:
    """Public: marked opt={"public": True}, or one of Litestar's own handlers (the
    OpenAPI pages, automatic OPTIONS). Every other route needs a credential and must
    name its scope (create_app checks this at start-up)."""
    if (getattr(handler, "opt", None) or {}).get("public"):
        return True
    return not getattr(getattr(handler, "fn", None), "__module__", "").startswith("tenant_api.")


def note_refused(scope: Scope, raw: bytes, codec: SessionCodec) -> None:
    """Keep what a security event may say about a refused credential (audit.usage)."""
    state = scope.setdefault("state", {})
    state["credential_error"] = refused_prefix(raw)
    value = raw.decode("latin-1").partition(" ")[2].strip()
    if value.count(".") == 2 and (expired := expired_session(codec, value)) is not None:
        session_id, organization_id, user_id = expired
        state["refused"] = Principal(status="expired", token_id=session_id, organization_id=organization_id,
                                     user_id=user_id, kind="session", role=None, scopes=frozenset(),
                                     project_ids=None, prefix="session", expires_at=None)


def request_credential(request: Request) -> Credential:
    credential = request.scope.get("state", {}).get("credential")
    if credential is None:  # a public route asked for an authenticated session: a bug
        raise NotAuthorizedException("missing credential")
    return credential


async def open_context_session(
    state: State, credential: Credential, request_id: str | None
) -> tuple[AsyncSession, Principal]:
    """Begin a transaction as ``credential``: auth.begin_request re-checks it (revoked,
    expired, membership, current role) and sets the context RLS reads. Used for each
    request, and for work a request leaves running after its own transaction has ended
    (each fetch of a live stream). The caller checks ``principal.ok`` and closes the session."""
    session: AsyncSession = state.sessionmaker()
    session.info["credential"] = credential
    session.info["request_id"] = request_id
    try:
        await session.connection()  # BEGIN; after_begin runs auth.begin_request
    except BaseException:
        await session.close()
        raise
    return session, session.info["principal"]


def refusal(principal: Principal) -> str:
    """Why a credential was refused, for a 401 (or a stream's closing event)."""
    return _REFUSED.get(principal.status, "invalid credential")


def refuse(state: dict[str, Any], principal: Principal) -> str:
    """Remember that the database refused the request's credential (a security event,
    audit.usage; counted against the address by the refused-credential guard,
    ops.ratelimit) and say why."""
    state["refused"] = principal
    return refusal(principal)


def admit(request: Request, principal: Principal) -> None:
    """Refuse a credential auth.begin_request did not accept (401) or a missing scope
    (403, naming it); remember who the request runs as (usage records, 403s included)."""
    if not principal.ok:
        raise NotAuthorizedException(refuse(request.scope["state"], principal))
    # Stored before the scope check: a 403 is still a request by this token (usage).
    request.scope["state"]["principal"] = principal
    required = _route_opt(request.scope).get("scope")
    if required and not principal.has_scope(required):
        raise PermissionDeniedException(f"missing scope: {required}", extra={"missing_scope": required})


async def open_request_session(request: Request, state: State) -> tuple[AsyncSession, Principal]:
    """Begin the request's transaction as its credential; refuse it or return the principal."""
    session, principal = await open_context_session(
        state, request_credential(request), request.scope["state"].get("request_id")
    )
    try:
        admit(request, principal)
    except BaseException:
        await session.close()
        raise
    return session, principal


async def provide_db(request: Request, state: State) -> AsyncGenerator[AsyncSession, None]:
    """One request, one transaction, one platform_token. We own the commit -- unless the
    request carries an Idempotency-Key: then the response is stored in this transaction
    and the middleware commits both (tenant_api.idempotency)."""
    session, _ = await open_request_session(request, state)
    handed_over = False
    try:
        await idempotency.bind(request, session)
        yield session
        handed_over = idempotency.defer_commit(request, session)
        if not handed_over:
            await session.commit()
    except BaseException:
        await session.rollback()
        raise
    finally:
        if not handed_over:
            await session.close()


@dataclass(frozen=True, slots=True)
class ReadTransaction:
    """A read route's transaction: the pool's asyncpg connection, context already set.
    Queries run on ``conn`` directly (prepared and cached by asyncpg); never commit."""

    conn: Any  # asyncpg.Connection
    principal: Principal


class read_transaction:  # noqa: N801 - used as `async with read_transaction(request) as tx`
    """provide_db without the ORM, for the generic read routes (the hot path): the same
    pool, the same four statements (BEGIN, auth.begin_request, the handler's query,
    COMMIT), the same refusals. SQLAlchemy's connection wrapper never sees this
    transaction, so it is always ended here before the connection goes back.

    A context manager the read handlers enter themselves rather than a generator
    dependency: Litestar's dependency cleanup machinery cost the hottest route more than
    the transaction's own Python (bench/RESULTS.md)."""

    __slots__ = ("_conn", "_pooled", "_request", "_transaction")

    def __init__(self, request: Request) -> None:
        self._request = request

    async def __aenter__(self) -> ReadTransaction:
        request = self._request
        credential = request_credential(request)
        engine = request.app.state.engine
        self._pooled = pooled = await checkout(engine)
        self._conn = conn = pooled.driver_connection
        self._transaction = transaction = conn.transaction()
        try:
            await transaction.start()
            row = await conn.fetchrow(BEGIN_REQUEST_SQL, credential.token_hash, credential.session_id,
                                      credential.session_org, request.scope["state"].get("request_id"))
            principal = Principal.from_row(row)
            if principal.restricted:
                await conn.execute(RESTRICTED_ROLE_SQL)
            admit(request, principal)
        except BaseException as exc:
            await self._release(database_unavailable(exc))
            raise
        return ReadTransaction(conn, principal)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            try:
                await self._transaction.commit()
            except BaseException as failure:
                await self._release(database_unavailable(failure))
                raise
            await self._release(False)
        else:
            await self._release(database_unavailable(exc))

    async def _release(self, broken: bool) -> None:
        conn, pooled = self._conn, self._pooled
        try:
            if not broken and not conn.is_closed() and conn.is_in_transaction():
                await self._transaction.rollback()
        except Exception:  # noqa: S110 - the connection is discarded below
            pass
        if conn.is_closed() or broken:
            # The server went away (restart, failover): every connection of this pool's
            # generation is as dead as this one. Invalidate them all, as SQLAlchemy does
            # for the ORM path, so each is replaced at its next checkout instead of
            # failing one more request (issue 10).
            self._request.app.state.engine.sync_engine.pool._invalidate(pooled)
        elif conn.is_in_transaction():
            pooled.invalidate()  # never hand a connection in an unknown state to the next request
        await checkin(pooled)


# The fast write routes (Resource.write_path="fast") run in the same transaction: it is
# not read-only, and it commits when the handler returns (a failed COMMIT is the
# client's 503, never a 2xx); the handler's statements go on ``tx.conn``.
write_transaction = read_transaction


# -- a transaction a dependency begins and the handler ends -----------------------------
#
# The fast write routes open their transaction in a dependency, so that the credential
# and the scope are checked (401/403) before the body is validated (422), as everywhere
# else. A generator dependency would say that, but Litestar's cleanup machinery for it
# cost a write more than its own Python (bench/RESULTS.md). So the dependency enters the
# transaction (a write_transaction, or provide_db for a keyed POST) and leaves it held
# in the request's state; the handler ends it (``held_transaction``: commit when it
# returns, rollback if it raises), and the edge middleware ends one no handler reached
# (the body was refused): rolled back, the connection returned (``release_held``).

HELD = "held_transaction"


def hold_transaction(request: Request, entered: Any) -> None:
    """``entered``: an async context manager already entered; ended exactly once."""
    request.scope["state"][HELD] = entered


class held_transaction:  # noqa: N801 - used as `async with held_transaction(request):`
    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        self._request = request

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        entered = self._request.scope["state"].pop(HELD)
        await entered.__aexit__(exc_type, exc, tb)  # never swallows the handler's exception


async def release_held(state: dict[str, Any]) -> None:
    """The edge's last word on a held transaction no handler ended: rolled back."""
    entered = state.pop(HELD, None)
    if entered is None:
        return
    reason = RuntimeError("the request ended before its handler ran")
    await entered.__aexit__(type(reason), reason, None)


async def checkout(engine: Any) -> Any:
    """A pooled connection (SQLAlchemy's pool: one pool, one set of limits and metrics).
    Taking the idle connection next in line involves no I/O while it is connected and
    current, and then runs directly; otherwise (connecting, reconnecting, waiting for a
    free one) through SQLAlchemy's greenlet, as engine.raw_connection() does. The peek
    reads the pool's internals: anything unexpected takes the greenlet path."""
    sync_engine = engine.sync_engine
    if _next_idle_is_ready(sync_engine.pool):
        try:
            return sync_engine.raw_connection()
        except MissingGreenlet:  # I/O was due after all: the record went back to the pool
            pass
    return await engine.raw_connection()


def _next_idle_is_ready(pool: Any) -> bool:
    try:
        queue = pool._pool
        waiting = queue._queue._queue  # AsyncAdaptedQueue -> asyncio.Queue -> deque
        if not waiting:
            return False
        record = waiting[-1] if queue.use_lifo else waiting[0]
        return bool(record.dbapi_connection is not None
                    and not pool._invalidate_time > record.starttime
                    and not record._soft_invalidate_time > record.starttime
                    and (pool._recycle < 0 or time.time() - record.starttime <= pool._recycle))
    except (AttributeError, IndexError):
        return False


async def checkin(pooled: Any) -> None:
    """Back to the pool: no I/O for a connection that is not in a transaction (the
    adapter has no transaction of its own to roll back), else through the greenlet."""
    if pooled.is_valid and not pooled.driver_connection.is_closed():
        try:
            pooled.close()
            return
        except MissingGreenlet:
            pass
    await greenlet_spawn(pooled.close)


async def provide_read(request: Request) -> AsyncGenerator[ReadTransaction, None]:
    """read_transaction as a dependency, for handlers outside the generic resources."""
    async with read_transaction(request) as tx:
        yield tx


async def provide_public_db(state: State) -> AsyncGenerator[AsyncSession, None]:
    """A transaction with no context (signup, login): RLS shows nothing, only the
    auth.* definer functions can act. On the login role's connection (tenant_login): the
    login functions are its alone, never the API role's (docs/security.md)."""
    session: AsyncSession = state.login_sessionmaker()
    try:
        yield session
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    finally:
        await session.close()


async def provide_ctx(request: Request, db: AsyncSession) -> Principal:
    return db.info["principal"]
