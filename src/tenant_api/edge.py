"""The edge of every request, as one pure-ASGI middleware (issue 9).

What every routed request passes through before its handler, in this order (outermost
first), each as it was when they were five middlewares of their own:

1. the request id (request_id.py): fixed, and the logging context set;
2. metrics and the access line (ops/metrics.py): every answer counted, timed, logged;
3. the usage record (audit/usage.py): every authenticated request leaves one;
4. the rate limit (ops/ratelimit.py): counted before the credential is checked;
5. the credential (auth/request.py): parsed without the database, 401 if malformed; an
   address over its refused-credential limit gets 429 first (ops/ratelimit.py);
6. a POST with an Idempotency-Key (and a credential) goes on through idempotency.py.

One middleware rather than five because they are one concern (what the API notes about
a request at its door) and because each Litestar middleware layer, each ``send`` wrapper
and each re-read of the headers cost the hot path a measurable share (bench/RESULTS.md):
here the headers are read once, what a route declares (public, rate_limit) is looked up
once per route, and one ``send`` wrapper sees the final status. An answer raised from
here (401, 429) is made into a response by the app's exception handler outside: its
status is taken from the exception, and the rate-limit headers ride on it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar.exceptions import HTTPException, NotAuthorizedException, WebSocketException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from tenant_api.audit.usage import UsageRecorder, usage_row
from tenant_api.auth.credentials import InvalidCredential, SessionCodec, bearer_from_subprotocols, parse_bearer
from tenant_api.auth.request import HELD, is_public, note_refused, release_held
from tenant_api.ops import metrics
from tenant_api.ops.ratelimit import RateLimiter, RefusedCredentials, headers_for
from tenant_api.errors import ProblemError
from tenant_api.idempotency import IdempotencyMiddleware
from tenant_api.request_id import ID_SENT, REQUEST_ID, new_request_id, valid_client_id

_AUTHORIZATION = b"authorization"
_REQUEST_ID = b"x-request-id"
_USER_AGENT = b"user-agent"
_PROTOCOL = b"sec-websocket-protocol"
_IDEMPOTENCY_KEY = b"idempotency-key"


class _Route:
    """What a route handler declares, read once per handler."""

    __slots__ = ("handler", "limited", "public", "rate_limit")

    def __init__(self, handler: Any) -> None:
        opt = getattr(handler, "opt", None) or {}
        self.handler = handler  # kept: the cache is keyed by id(handler)
        self.public = is_public(handler)
        self.rate_limit = opt.get("rate_limit")
        self.limited = self.rate_limit is not False


class EdgeMiddleware:
    """See the module doc. Built once per route by Litestar (``edge(...)`` is the factory)."""

    def __init__(self, app: ASGIApp, *, codec: SessionCodec, observe: metrics.RequestObserver,
                 recorder: UsageRecorder | None, limiter: RateLimiter | None,
                 refusals: RefusedCredentials | None,
                 idempotency: IdempotencyMiddleware | None, routes: dict[int, _Route]) -> None:
        self.app = app
        self.idempotency = idempotency
        self.codec = codec
        self.observer = observe
        self.recorder = recorder
        self.limiter = limiter
        self.refusals = refusals
        self._routes = routes

    def _route(self, handler: Any) -> _Route:
        route = self._routes.get(id(handler))
        if route is None or route.handler is not handler:
            route = self._routes[id(handler)] = _Route(handler)
        return route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._socket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        authorization = user_agent = keyed = None
        request_id: str | None = state.get("request_id")
        for name, value in scope["headers"]:
            if name == _AUTHORIZATION:
                authorization = value
            elif name == _USER_AGENT:
                user_agent = value
            elif name == _REQUEST_ID and request_id is None:
                request_id = valid_client_id(value)
            elif name == _IDEMPOTENCY_KEY:
                keyed = value
        if request_id is None:
            request_id = new_request_id()
        state["request_id"] = request_id
        request_id_header = request_id.encode()
        context = REQUEST_ID.set(request_id)
        route = self._route(scope.get("route_handler"))
        started, wall = time.perf_counter(), time.time()
        status = 500
        streaming = False
        limit_headers: list[tuple[bytes, bytes]] | None = None
        limit_key: str | None = None

        async def observe(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                # The request id and the rate limit's headers on the way out (the app's
                # before_send hook then has nothing left to add: request_id.py).
                message["headers"] = headers = [*(message.get("headers") or ()), *(limit_headers or ()),
                                                (_REQUEST_ID, request_id_header)]
                state[ID_SENT] = True
                if metrics.is_event_stream(headers):
                    streaming = True
                    metrics.SSE_STREAMS.inc()
            await send(message)

        try:
            limiter = self.limiter
            if limiter is not None and route.limited:
                limit_key, quota, org = limiter.classify(authorization, scope.get("client"), route.rate_limit)
                if quota is None:
                    quota = limiter.quota_of(org)
                hit = await limiter.hit(limit_key, quota)
                if hit is not None:
                    limit_headers = headers_for(quota, hit)
                    if hit.count > quota.limit:
                        metrics.RATE_LIMITED.labels(quota.name).inc()
                        raise ProblemError(429, quota.refusal(hit), headers=quota.retry_headers(hit, limit_headers))

            async def admitted() -> None:
                if not route.public:
                    try:
                        state["credential"] = parse_bearer(
                            authorization.decode("latin-1") if authorization else None, self.codec)
                    except InvalidCredential as exc:
                        if authorization:  # a credential was sent and refused: a security event (audit.usage)
                            note_refused(scope, authorization, self.codec)
                        raise NotAuthorizedException(str(exc)) from None
                if keyed is not None and self.idempotency is not None and scope.get("method") == "POST" \
                        and state.get("credential") is not None:
                    await self.idempotency.handle(scope, receive, observe, self.app)
                else:
                    await self.app(scope, receive, observe)

            if self.refusals is not None and not route.public:
                # An address that sent too many refused credentials gets 429 before its next
                # unknown one is parsed or looked up (ops.ratelimit.RefusedCredentials).
                # The rate limit's key is the credential's own when one was sent (no second hash).
                known = limit_key if limit_key is not None and limit_key.startswith("c:") else None
                await self.refusals.guard(scope, authorization, admitted, known)
            else:
                await admitted()
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except HTTPException as exc:
            # Answered outside this middleware (a 401 from here, a 429): the exception
            # carries the rate-limit headers to the response the app makes of it.
            status = exc.status_code
            if limit_headers is not None:
                exc.headers = {**(exc.headers or {}), **{k.decode(): v.decode() for k, v in limit_headers}}
            raise
        except Exception as exc:
            status = getattr(exc, "status_code", 500)
            raise
        finally:
            if HELD in state:  # a write's transaction whose handler never ran (its body was refused)
                await release_held(state)
            duration = time.perf_counter() - started
            if streaming:
                metrics.SSE_STREAMS.dec()
            principal = state.get("principal")
            if limit_key is not None and principal is not None and principal.organization_id is not None \
                    and limit_key.startswith("c:"):
                self.limiter.learn(limit_key, principal.organization_id)  # type: ignore[union-attr]
            if self.recorder is not None and not route.public:
                row = usage_row(scope, status, wall, duration, user_agent)
                if row is not None:
                    self.recorder.record(row)
            self.observer.request(scope, status, duration)
            REQUEST_ID.reset(context)

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: dict[str, Any] = scope.setdefault("state", {})
        request_id = state.get("request_id")
        authorization = protocol = None
        for name, value in scope["headers"]:
            if name == _AUTHORIZATION:
                authorization = value
            elif name == _PROTOCOL:
                protocol = value
            elif name == _REQUEST_ID and request_id is None:
                request_id = valid_client_id(value)
        state["request_id"] = request_id = request_id or new_request_id()
        context = REQUEST_ID.set(request_id)
        public = self._route(scope.get("route_handler")).public

        async def admitted(scope: Scope, receive: Receive, send: Send) -> None:
            if public:
                await self.app(scope, receive, send)
                return
            # Browsers cannot set headers on WebSockets: the credential may come as a
            # subprotocol (never in the URL, which logs keep).
            raw = authorization if authorization is not None else bearer_from_subprotocols(protocol)

            async def checked() -> None:
                try:
                    state["credential"] = parse_bearer(raw.decode("latin-1") if raw else None, self.codec)
                except InvalidCredential as exc:
                    if raw:
                        note_refused(scope, raw, self.codec)
                    # a close code the client can read, not a 4500
                    raise WebSocketException(detail=str(exc), code=4401) from None
                await self.app(scope, receive, send)

            if self.refusals is not None:  # too many refused credentials: closed with 4429
                await self.refusals.guard(scope, raw, checked)
            else:
                await checked()

        try:
            await self.observer.socket(admitted, scope, receive, send)
        finally:
            REQUEST_ID.reset(context)


def edge(*, codec: SessionCodec, observer: metrics.RequestObserver, recorder: UsageRecorder | None,
         limiter: RateLimiter | None, refusals: RefusedCredentials | None = None,
         idempotency: IdempotencyMiddleware | None = None) -> Any:
    """The middleware factory for Litestar (one EdgeMiddleware per route, one route table)."""
    routes: dict[int, _Route] = {}

    def wrap(app: ASGIApp) -> ASGIApp:
        return EdgeMiddleware(app, codec=codec, observe=observer, recorder=recorder, limiter=limiter,
                              refusals=refusals, idempotency=idempotency, routes=routes)

    return wrap
