"""ASGI factory for multi-worker servers: `uvicorn --factory tenant_api.asgi:create`.
Each worker builds its app (and its own connection pool) from the environment, and logs
as `tenant-api serve` does (JSON lines on stderr, the access line included), whichever
server started it."""

from litestar import Litestar

from tenant_api.app import create_app
from tenant_api.ops.logs import configure
from tenant_api.settings import Settings


def create() -> Litestar:
    settings = Settings.from_env()
    configure(settings.observability)
    return create_app(settings)
