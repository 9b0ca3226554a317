"""create_app(settings): the one place the application is assembled."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from tenant_api.audit.controller import audit_router
from tenant_api.auth.controller import auth_router, me_router
from tenant_api.auth.credentials import SessionCodec
from tenant_api.auth.request import CredentialMiddleware, RequestIdMiddleware, is_public, provide_ctx, provide_db
from tenant_api.db.engine import create_api_engine, create_sessionmaker
from tenant_api.errors import EXCEPTION_HANDLERS
from tenant_api.resources import REGISTRY
from tenant_api.resources.base import resource_router
from tenant_api.resources.jobs import job_logs_router
from tenant_api.resources.org import organization_router
from tenant_api.settings import Settings
from tenant_api.tokens.controller import tokens_router


@get("/health", opt={"public": True}, operation_id="health", tags=["meta"], include_in_schema=False)
async def health() -> dict[str, str]:
    return {"status": "ok"}


def routers() -> list[Router | Any]:
    return [
        health,
        auth_router,
        me_router,
        organization_router,
        tokens_router,
        audit_router,
        job_logs_router,
        *(resource_router(res) for res in REGISTRY),
    ]


def _check_route_security(app: Litestar) -> None:
    """Every route of ours either is public or names its scope (None = any valid
    credential). A route that forgot would run without a scope check: refuse to start."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not is_public(handler) and "scope" not in (handler.opt or {}):
                raise RuntimeError(f"route {route.path} ({handler.handler_name}) declares neither public nor scope")


def create_app(settings: Settings) -> Litestar:
    if not settings.database.url:
        raise ValueError("settings.database.url (DATABASE_URL) is required")
    codec = SessionCodec(settings.auth.jwt_secret, settings.auth.jwt_issuer)
    engine = create_api_engine(settings.database)
    sessionmaker = create_sessionmaker(engine)

    async def dispose() -> None:
        await engine.dispose()

    app = Litestar(
        route_handlers=routers(),
        dependencies={"db": Provide(provide_db), "ctx": Provide(provide_ctx)},
        middleware=[RequestIdMiddleware(), CredentialMiddleware(codec)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        state=State({"settings": settings, "sessionmaker": sessionmaker, "codec": codec, "engine": engine}),
        on_shutdown=[dispose],
        openapi_config=OpenAPIConfig(
            title="tenant-api",
            version="1",
            description="Multi-tenant API of an AI-agent platform. Authenticate with "
            "`Authorization: Bearer <API token or session JWT>`.",
            path="/docs",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
        debug=False,
    )
    _check_route_security(app)
    return app
