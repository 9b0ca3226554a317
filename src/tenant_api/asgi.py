"""ASGI factory for multi-worker servers: `uvicorn --factory tenant_api.asgi:create`.
Each worker builds its app (and its own connection pool) from the environment."""

from litestar import Litestar

from tenant_api.app import create_app
from tenant_api.settings import Settings


def create() -> Litestar:
    return create_app(Settings.from_env())
