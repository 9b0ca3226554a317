"""Safe retries: ``Idempotency-Key`` on every authenticated POST, with Stripe's semantics.

The same key with the same request replays the first response (status and body) for 24
hours; the same key with a different request is a 422; a second request while the first
is still running is a 409. Keys belong to the credential that sent them (RLS, policies/
idempotency_key.sql). Only a successful (2xx) response is kept, and it is kept in the
same transaction as the change it reports: a request that failed changed nothing, so a
retry simply runs again. See docs/idempotency.md.

How it fits the request path, written once for every route:

1. ``IdempotencyMiddleware`` (called by the edge middleware after the credential check)
   reads the body, computes the request's fingerprint and leaves a ``PendingRequest`` in the scope.
2. ``bind(request, session)``, called where the request's transaction begins
   (``auth.request.provide_db``; the claim routes, which open their own transactions, call
   it themselves): takes a transaction-level advisory lock on the key (busy: 409, the
   first request is in flight), then looks the key up under RLS (found: replay it, or
   422 if the request differs). The lock is released at COMMIT or ROLLBACK, so it is
   correct behind PgBouncer in transaction mode.
3. The handler runs. Instead of committing, ``provide_db`` hands its session over
   (``defer_commit``); the middleware buffers the response, stores it in that session
   and commits: the stored response and the change commit together or not at all, and
   the client gets the response only after both are durable.

Nothing is readable at rest: the key is stored as an HMAC under a server key (derived
from JWT_SECRET: a guessable key cannot be tested against a copy of the table), the
request as an HMAC, and the response body (which may hold a new token, an invite or a
claim secret) encrypted with AES-256-GCM under a key derived (HKDF) from the
Idempotency-Key itself, which the database never sees, and the server key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from litestar import Request, Response
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.db.models import IdempotencyKey
from tenant_api.errors import PROBLEM_MEDIA_TYPE, ProblemError

log = logging.getLogger("tenant_api.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL_SQL = "interval '24 hours'"
MAX_KEY_LENGTH = 255
MAX_BODY_BYTES = 10 * 1024 * 1024  # Litestar's own request body limit
_STATE = "idempotency"


class IdempotentReplay(Exception):
    """The stored first response to this key: sent instead of running the handler."""

    def __init__(self, status: int, content_type: str | None, body: bytes) -> None:
        super().__init__(status)
        self.status, self.content_type, self.body = status, content_type, body


def replay_response(request: Request, exc: IdempotentReplay) -> Response:
    return Response(content=exc.body, status_code=exc.status, media_type=exc.content_type or "application/json",
                    headers={REPLAYED_HEADER: "true"})


def _field_problem(status: int, message: str) -> ProblemError:
    return ProblemError(status, f"{HEADER}: {message}", extra={"errors": [{"field": HEADER, "message": message}]})


class ServerKeys:
    """The server side of the scheme: a key for the HMACs, and the salt of every
    response key. Derived from JWT_SECRET under a label of its own."""

    def __init__(self, server_secret: str) -> None:
        self.mac_key = hmac.new(server_secret.encode(), b"tenant-api idempotency keys v1", hashlib.sha256).digest()

    def key_hash(self, organization_id: UUID, token_id: UUID, key: str) -> bytes:
        return hmac.new(self.mac_key, b"key\0" + organization_id.bytes + token_id.bytes + key.encode(),
                        hashlib.sha256).digest()

    def request_hash(self, fingerprint: bytes) -> bytes:
        return hmac.new(self.mac_key, b"request\0" + fingerprint, hashlib.sha256).digest()

    def _cipher(self, key: str, organization_id: UUID, token_id: UUID) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=self.mac_key,
                    info=b"tenant-api idempotent response v1\0" + organization_id.bytes + token_id.bytes)
        return AESGCM(hkdf.derive(key.encode()))

    def seal(self, key: str, organization_id: UUID, token_id: UUID, key_hash: bytes, body: bytes) -> bytes:
        nonce = os.urandom(12)
        # The key hash as associated data: a ciphertext moved to another row does not open.
        return nonce + self._cipher(key, organization_id, token_id).encrypt(nonce, body, key_hash)

    def open(self, key: str, organization_id: UUID, token_id: UUID, key_hash: bytes, sealed: bytes) -> bytes:
        return self._cipher(key, organization_id, token_id).decrypt(sealed[:12], sealed[12:], key_hash)


def fingerprint(method: str, path: str, query: bytes, content_type: bytes, body: bytes) -> bytes:
    """What "the same request" means: method, path, query and body. A JSON body counts by
    its content (key order and spacing do not matter), anything else byte for byte."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    media = content_type.split(b";", 1)[0].strip().lower()
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), query, media, canonical])).digest()


@dataclass
class PendingRequest:
    """One keyed POST on its way through: set by the middleware, bound to the session
    whose transaction makes the change (``bind``), settled by the middleware."""

    key: str
    fingerprint: bytes
    keys: ServerKeys
    session: AsyncSession | None = None
    key_hash: bytes = b""
    request_hash: bytes = b""
    owner: tuple[UUID, UUID] | None = None  # (organization, token)
    deferred: bool = False
    path: str = ""
    method: str = "POST"
    _closed: list[AsyncSession] = field(default_factory=list)

    async def store(self, status: int, content_type: str | None, body: bytes) -> None:
        assert self.session is not None and self.owner is not None
        org, token = self.owner
        await self.session.execute(insert(IdempotencyKey).values(
            organization_id=org, token_id=token, key_hash=self.key_hash, request_hash=self.request_hash,
            method=self.method, path=self.path[:2000], status_code=status,
            content_type=content_type[:200] if content_type else None,
            response=self.keys.seal(self.key, org, token, self.key_hash, body),
            expires_at=func.now() + text(TTL_SQL)))

    async def release(self) -> None:
        """Whatever happened, a session handed over is ended (rolled back if not committed)."""
        session, self.session, self.deferred = self.session, None, False
        if session is not None:
            try:
                await session.rollback()
            finally:
                await session.close()


def pending(request: Request) -> PendingRequest | None:
    return request.scope.get("state", {}).get(_STATE)


async def bind(request: Request, session: AsyncSession) -> None:
    """Tie the request's Idempotency-Key (if any) to ``session``'s transaction: 409 if a
    request with the key is in flight, the stored response (IdempotentReplay) or 422 if
    it was used already. No key: nothing happens."""
    state = pending(request)
    if state is None:
        return
    principal = session.info["principal"]
    org, token = principal.organization_id, principal.token_id
    key_hash = state.keys.key_hash(org, token, state.key)
    request_hash = state.keys.request_hash(state.fingerprint)
    # Held until this transaction ends; a second request with the key does not wait.
    lock_id = int.from_bytes(key_hash[:8], "big", signed=True)
    if not await session.scalar(select(func.pg_try_advisory_xact_lock(lock_id))):
        raise _field_problem(409, "a request with this key is still in progress; retry once it has finished")
    # A statement of its own, after the lock: its snapshot sees a first request that
    # committed (and released the lock) a moment ago.
    found = (await session.execute(
        select(IdempotencyKey.request_hash, IdempotencyKey.status_code, IdempotencyKey.content_type,
               IdempotencyKey.response, (IdempotencyKey.expires_at > func.now()).label("live"))
        .where(IdempotencyKey.organization_id == org, IdempotencyKey.token_id == token,
               IdempotencyKey.key_hash == key_hash))).first()
    if found is not None and found.live:
        if not hmac.compare_digest(found.request_hash, request_hash):
            raise _field_problem(422, "this key was used with a different request (method, path or body) within"
                                      " the last 24 hours; use a new key for a new request")
        body = state.keys.open(state.key, org, token, key_hash, found.response)
        raise IdempotentReplay(found.status_code, found.content_type, body)
    if found is not None:  # expired: the key is free again
        await session.execute(delete(IdempotencyKey).where(
            IdempotencyKey.organization_id == org, IdempotencyKey.token_id == token,
            IdempotencyKey.key_hash == key_hash))
    state.session, state.key_hash, state.request_hash, state.owner = session, key_hash, request_hash, (org, token)


def unbind(request: Request) -> None:
    """The bound transaction is being rolled back (a claim that found nothing yet)."""
    state = pending(request)
    if state is not None:
        state.session = None


def defer_commit(request: Request, session: AsyncSession) -> bool:
    """True if ``session`` carries the request's key: the middleware will store the
    response in it and commit (and close it); the caller must do neither."""
    state = pending(request)
    if state is None or state.session is not session:
        return False
    state.deferred = True
    return True


def _valid_key(raw: bytes) -> str:
    try:
        key = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _field_problem(422, "use printable ASCII characters only") from None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise _field_problem(422, f"1 to {MAX_KEY_LENGTH} printable ASCII characters (a UUID is a good key)")
    return key


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise ProblemError(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ProblemError(413, "request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _problem_messages(status: int, detail: str, start: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                       "detail": detail}).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
    headers += [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False})


class IdempotencyMiddleware:
    """See the module doc. Called by the edge middleware (edge.py) once it has checked
    the credential, for a POST with a credential and an Idempotency-Key only: anything
    else never reaches it (a middleware layer of its own cost every request a share of
    the hot path, bench/RESULTS.md). Public routes (signup, login) have no credential to
    keep a key for, and ignore it."""

    def __init__(self, keys: ServerKeys) -> None:
        self.keys = keys

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        http: Any = scope  # an HTTP scope (the edge calls this for HTTP POSTs only)
        raw = None
        if http["method"] == "POST" and http.get("state", {}).get("credential") is not None:
            raw = next((v for k, v in http.get("headers", []) if k == b"idempotency-key"), None)
        if raw is None:
            await next_app(scope, receive, send)
            return
        key = _valid_key(raw)
        body = await _read_body(receive)
        content_type = next((v for k, v in http.get("headers", []) if k == b"content-type"), b"")
        state = PendingRequest(key=key, keys=self.keys, path=http["path"], method=http["method"],
                               fingerprint=fingerprint(http["method"], http["path"], http.get("query_string", b""),
                                                       content_type, body))
        http["state"][_STATE] = state
        delivered = False

        async def replayed_receive() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def buffering_send(message: Any) -> None:
            nonlocal start
            if not state.deferred:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            assert start is not None
            for settled in await self._settle(state, start, b"".join(chunks)):
                await send(settled)  # type: ignore[arg-type]

        try:
            await next_app(scope, replayed_receive, buffering_send)
        finally:
            await state.release()

    async def _settle(self, state: PendingRequest, start: dict[str, Any],
                      body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        """Store a 2xx response with the change, commit, and only then answer."""
        session = state.session
        assert session is not None
        status = int(start["status"])
        try:
            if 200 <= status < 300:
                content_type = next((v.decode("latin-1") for k, v in start.get("headers", [])
                                     if k.lower() == b"content-type"), None)
                await state.store(status, content_type, body)
            await session.commit()
        except Exception:  # noqa: BLE001 -- nothing was committed: the client may retry with the key
            log.exception("could not commit a request with an Idempotency-Key")
            return _problem_messages(503, "the change could not be committed; nothing was changed: retry the request",
                                     start)
        finally:
            state.session, state.deferred = None, False
            await session.close()
        return start, {"type": "http.response.body", "body": body, "more_body": False}
