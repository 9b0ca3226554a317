"""create_app(settings): the one place the application is assembled."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy import text

from tenant_api.audit.usage import UsageRecorder
from tenant_api.auth.credentials import SessionCodec
from tenant_api.auth.passwords import PasswordWork
from tenant_api.auth.request import is_public, provide_ctx, provide_db, provide_read
from tenant_api.contract import ContractOpenAPIConfig
from tenant_api.db.engine import create_api_engine, create_sessionmaker
from tenant_api.errors import EXCEPTION_HANDLERS, UNIQUE_KEYS_SQL, log
from tenant_api.idempotency import IdempotencyMiddleware, IdempotentReplay, ServerKeys, replay_response
from tenant_api.edge import edge
from tenant_api.ops.metrics import RequestObserver, log_unrouted
from tenant_api.ops.ratelimit import FailedLogins, RateLimiter, RefusedCredentials, close_limiter
from tenant_api.request_id import add_request_id_header
from tenant_api.ops.shutdown import Drain, install_signal_handlers
from tenant_api.inputs import TYPE_DECODERS, BoundedRequest, InputSchemaPlugin
from tenant_api import logredact
from tenant_api.invites.mailer import Mailer
from tenant_api.resources.conversation_hub import ConversationHub
from tenant_api.resources.desktop_connections import desktop_reaper, instance_id
from tenant_api.runs.queue import RunQueueHub
from tenant_api.routes import route_handlers
from tenant_api.settings import Settings
from tenant_api.webhooks.signing import server_key


# The docs pages load these bundles from a CDN: pinned versions, never @latest.
SCALAR_VERSION = "1.72.1"
SWAGGER_UI_VERSION = "5.18.2"


def _check_route_security(app: Litestar) -> None:
    """Every route of ours either is public or names its scope (None = any valid
    credential). A route that forgot would run without a scope check: refuse to start."""
    for route in app.routes:
        # HTTP routes group handlers by method; a WebSocket route has exactly one.
        handlers = getattr(route, "route_handlers", None) or [getattr(route, "route_handler", None)]
        for handler in filter(None, handlers):
            if not is_public(handler) and "scope" not in (handler.opt or {}):
                raise RuntimeError(f"route {route.path} ({handler.handler_name}) declares neither public nor scope")


def create_app(settings: Settings) -> Litestar:
    if not settings.database.url:
        raise ValueError("settings.database.url (DATABASE_URL) is required")
    if not (settings.database.login_url and settings.database.jobs_url):
        raise ValueError("LOGIN_DATABASE_URL (tenant_login) and JOBS_DATABASE_URL (tenant_api_jobs) are required:"
                         " the API role's own login may neither log users in nor run the background duties")
    logredact.install()  # no query string in any log line of this process (docs/robustness.md)
    codec = SessionCodec(settings.auth.jwt_secret, settings.auth.jwt_issuer)
    engine = create_api_engine(settings.database)
    sessionmaker = create_sessionmaker(engine)
    # Two small pools of other logins (docs/security.md): the public auth routes' (the
    # only one that may read a password hash or open a session), and the background
    # threads' (mailer, desktop reaper, usage writer).
    login_engine = create_api_engine(settings.database.login_database())
    jobs_engine = create_api_engine(settings.database.jobs_database())
    jobs_sessionmaker = create_sessionmaker(jobs_engine)
    # Live streams: one LISTEN connection per process, opened by the first stream.
    hub = ConversationHub(settings.database.listen_url or settings.database.url,
                          fetch_concurrency=settings.database.pool_size // 2)
    # Long-polling runner claims: one LISTEN connection per process too (runs/queue.py).
    run_queue = RunQueueHub(settings.database.listen_url or settings.database.url)

    async def load_unique_keys(app: Litestar) -> None:
        """Constraint name -> columns, so a 409 can name the conflicting fields."""
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text(UNIQUE_KEYS_SQL))).all()
            app.state.unique_keys = {r.name: list(r.columns or []) for r in rows}
        except Exception:  # the database may not be up yet; messages fall back to names
            log.warning("could not load unique key names", exc_info=True)

    mailer_tasks: list[asyncio.Task[None]] = []

    async def start_mailer() -> None:
        # One mailer per API process; SKIP LOCKED keeps several from sending a mail twice.
        if settings.invites.mailer_enabled:
            mailer = Mailer(jobs_sessionmaker, settings.invites, settings.auth.jwt_secret, settings.server.base_url)
            mailer_tasks.append(asyncio.create_task(mailer.run_forever(), name="invite-mailer"))
        else:
            logging.getLogger("tenant_api.mailer").info(
                "SMTP_URL is not set: invite mails wait in invite_outbox until a process with SMTP_URL runs")

    # Usage records are written by a thread of their own (audit/usage.py), started with
    # the app and flushed on graceful shutdown before the engine goes away.
    recorder = UsageRecorder(settings.database.jobs_database(), flush_seconds=settings.audit.usage_flush_seconds,
                             batch_size=settings.audit.usage_batch_size,
                             max_pending=settings.audit.usage_max_pending)

    def start_recorder() -> None:
        if settings.audit.record_usage:
            recorder.start()

    # Quotas per credential (per address without one), counted before the credential
    # is checked; the client address is the peer's, or a trusted proxy's X-Forwarded-For.
    limiter = RateLimiter(settings.rate_limit, settings.auth.auth_rate_per_minute, engine)
    # Refused credentials per address: a flood of them costs neither lookups nor rows.
    refusals = (RefusedCredentials(limiter, settings.rate_limit.refused_per_minute)
                if settings.rate_limit.enabled else None)
    failed_logins = FailedLogins(limiter, settings.auth.login_failures_per_account,
                                 settings.auth.login_failure_window_seconds)
    passwords = PasswordWork.from_settings(settings.auth)
    proxy_middleware = [_trusted_proxies(settings.server.trusted_proxies)] if settings.server.trusted_proxies else []

    # Graceful shutdown (ops/shutdown.py): under uvicorn the app takes SIGTERM first and
    # ends its streams, sockets and waiting claims before uvicorn's own shutdown.
    drain = Drain(hub, drain_seconds=min(5.0, settings.server.shutdown_seconds / 2), run_queue=run_queue)
    restore_signals: list[Any] = []

    async def take_signals() -> None:
        restore_signals.append(install_signal_handlers(drain))

    async def dispose() -> None:
        for restore in restore_signals:
            restore()
        await close_limiter(limiter)
        passwords.close()
        await hub.close()
        await run_queue.close()
        for task in mailer_tasks:
            task.cancel()
        await asyncio.gather(*mailer_tasks, return_exceptions=True)
        await engine.dispose()
        await login_engine.dispose()
        await jobs_engine.dispose()

    observer = RequestObserver(engine, access=settings.observability.access_log)
    openapi_config = _openapi_config()
    app = Litestar(
        route_handlers=route_handlers(),  # every area's ROUTES (tenant_api.routes)
        dependencies={"db": Provide(provide_db), "ctx": Provide(provide_ctx), "tx": Provide(provide_read)},
        # Request id, metrics and access line, usage record, rate limit, refused-credential
        # limit, credential, and then a keyed POST's Idempotency-Key: one middleware (edge.py).
        middleware=[*proxy_middleware,
                    edge(codec=codec, observer=observer,
                         recorder=recorder if settings.audit.record_usage else None,
                         limiter=limiter if settings.rate_limit.enabled else None, refusals=refusals,
                         idempotency=IdempotencyMiddleware(ServerKeys(settings.auth.jwt_secret)))],
        exception_handlers={**EXCEPTION_HANDLERS, IdempotentReplay: replay_response},  # type: ignore[dict-item]
        # Bad input is refused before any recursion or the driver meets it (inputs.py).
        request_class=BoundedRequest,
        type_decoders=TYPE_DECODERS,
        plugins=[InputSchemaPlugin()],
        state=State({"settings": settings, "sessionmaker": sessionmaker, "codec": codec, "engine": engine,
                     "login_sessionmaker": create_sessionmaker(login_engine), "jobs_sessionmaker": jobs_sessionmaker,
                     "conversation_hub": hub, "desktop_instance_id": instance_id(settings.desktops),
                     "usage": recorder, "rate_limiter": limiter, "failed_logins": failed_logins,
                     "request_observer": observer, "passwords": passwords, "drain": drain, "run_queue": run_queue,
                     "webhook_key": server_key(settings.webhooks.signing_key, settings.auth.jwt_secret)}),
        on_startup=[load_unique_keys, start_mailer, start_recorder, take_signals],
        lifespan=[desktop_reaper, observer.running],
        on_shutdown=[recorder.aclose, dispose],
        before_send=[add_request_id_header, log_unrouted],
        openapi_config=openapi_config,
        debug=False,
        # Logging belongs to the process (tenant-api serve, tenant_api.asgi, make run):
        # Litestar's default would re-route the root logger through its own queue and
        # format, and the JSON lines (the access line included) would be lost.
        logging_config=None,
    )
    openapi_config.bind(app)
    _check_route_security(app)
    return app


def _trusted_proxies(trusted: tuple[str, ...]) -> Any:
    """uvicorn's X-Forwarded-For handling as app middleware, so one setting governs it
    whatever server or worker count runs the app (uvicorn's own is switched off)."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    def wrap(app: Any) -> Any:
        return ProxyHeadersMiddleware(app, trusted_hosts=list(trusted))

    return wrap


def _openapi_config() -> ContractOpenAPIConfig:
    return ContractOpenAPIConfig(
        title="tenant-api",
        version="1",
        description="Multi-tenant API of an AI-agent platform. Authenticate with "
        "`Authorization: Bearer <API token or session JWT>`. Every error is an RFC 9457 problem "
        "(`application/problem+json`) whose `type` names its kind (docs/errors.md); every response "
        "carries `X-Request-ID` and, where a quota applies, `RateLimit-Policy` and `RateLimit`.",
        path="/docs",
        render_plugins=[ScalarRenderPlugin(version=SCALAR_VERSION),
                        SwaggerRenderPlugin(version=SWAGGER_UI_VERSION, path="/swagger")],
        components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
        security=[{"bearer": []}],
    )
