"""`make run`: a ready-to-use API on this machine, nothing else required.

Starts the embedded PostgreSQL (data in .data/pg) unless DATABASE_URL is set,
bootstraps roles, applies migrations as the owner, creates the demo organization and
its owner on first start, mints a fresh demo API token, prints the login, the token and
the docs URL, starts a job scheduler in a background thread (what `tenant-api
scheduler` runs as its own process in production: it also returns lost runner leases to
the queue and delivers webhooks) and a reference runner as a child process (`tenant-api
runner`, with a token of its own restricted to tasks:write), and serves on
127.0.0.1:8000. So a schedule's jobs really run here, their logs and exit codes show
through the API, and a webhook receiver on this machine gets signed events. Running it
again reuses the data.

The demo password and the JWT signing key live in .data/ (git-ignored): this is a
developer's sandbox, not a deployment.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from tenant_api.db.policies import PROJECT_ROOT
from tenant_api.settings import Settings, asyncpg_url

DATA_DIR = Path(os.environ.get("TENANT_API_DATA", PROJECT_ROOT / ".data"))
DEMO_EMAIL = "owner@demo.example"


def _secret_file(name: str, make) -> str:  # type: ignore[no-untyped-def]
    path = DATA_DIR / name
    if path.exists():
        return path.read_text().strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value)
    path.chmod(0o600)
    return value


def prepare_database() -> Settings:
    """Embedded server + bootstrap + migrations; returns settings pointing at it."""
    from tenant_api.db import embedded, migrate
    from tenant_api.db.bootstrap import bootstrap

    env = dict(os.environ)
    jwt_secret = env.get("JWT_SECRET") or _secret_file("jwt_secret", lambda: secrets.token_urlsafe(48))
    settings = Settings.from_env().with_auth(jwt_secret=jwt_secret)
    if not settings.database.url:
        admin_url = embedded.start(DATA_DIR / "pg")
        db_password = _secret_file("db_password", lambda: secrets.token_urlsafe(24))
        result = asyncio.run(bootstrap(admin_url, database="tenant", owner_password=db_password,
                                       api_password=db_password))
        settings = settings.with_database(url=asyncpg_url(result.api_url), owner_url=asyncpg_url(result.owner_url))
    if settings.database.owner_url:
        migrate.upgrade(settings.database.owner_url)
    return settings


async def signup_via_api(settings: Settings, email: str, password: str, display_name: str) -> dict:
    """Sign up through the application itself (the same path as POST /v1/auth/signup)."""
    from litestar.testing import AsyncTestClient

    from tenant_api.app import create_app

    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post("/v1/auth/signup",
                                     json={"email": email, "password": password, "display_name": display_name})
        return {"status": response.status_code, **response.json()}


async def demo_token(settings: Settings, password: str) -> dict:
    from litestar.testing import AsyncTestClient

    from tenant_api.app import create_app
    from tenant_api.auth.scopes import ROLE_SCOPES

    async with AsyncTestClient(create_app(settings)) as client:
        signup = await client.post("/v1/auth/signup",
                                   json={"email": DEMO_EMAIL, "password": password, "display_name": "Demo Owner"})
        if signup.status_code not in (201, 409):
            raise SystemExit(f"demo signup failed: {signup.status_code} {signup.text}")
        login = await client.post("/v1/auth/login", json={"email": DEMO_EMAIL, "password": password})
        if login.status_code != 200:
            raise SystemExit(f"demo login failed: {login.status_code} {login.text}")
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        token = await client.post("/v1/tokens", headers=headers,
                                  json={"name": "make run demo token", "scopes": sorted(ROLE_SCOPES["owner"])})
        if token.status_code != 201:
            raise SystemExit(f"demo token failed: {token.status_code} {token.text}")
        runner = await client.post("/v1/tokens", headers=headers,
                                   json={"name": "make run runner", "scopes": ["tasks:write"]})
        if runner.status_code != 201:
            raise SystemExit(f"runner token failed: {runner.status_code} {runner.text}")
        await client.post("/v1/auth/logout", headers=headers)
        return {**token.json(), "runner_token": runner.json()["token"]}


def run_dev() -> None:
    import logging

    from tenant_api.cli import _serve

    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("tenant_api").setLevel(logging.INFO)
    settings = prepare_database()
    if not settings.invites.smtp_url:
        # No mail server on a developer's machine: invite mails, accept link and secret
        # included, go to this terminal (tenant_api.invites.mailer). Never in `serve`.
        settings = settings.with_invites(log_links=True)
    # A developer's webhook receiver listens on this machine: let deliveries reach it.
    settings = settings.with_webhooks(allow_private_targets=True)
    password = _secret_file("demo_password", lambda: secrets.token_urlsafe(12))
    token = asyncio.run(demo_token(settings, password))
    host, port = settings.server.host, settings.server.port
    print(
        "\n".join(
            [
                "",
                "tenant-api is ready.",
                f"  docs:      http://{host}:{port}/docs",
                f"  login:     {DEMO_EMAIL} / {password}",
                f"  API token: {token['token']}   (all owner scopes, expires {token['expires_at']})",
                f"  try:       curl -H 'Authorization: Bearer {token['token']}' http://{host}:{port}/v1/me",
                "  invites:   " + ("sent through SMTP_URL" if settings.invites.smtp_url
                                    else "mails (with their accept links) are printed here; set SMTP_URL to send"),
                "  scheduler: running in the background (tenant-api scheduler in production);"
                " it delivers webhooks too (local receivers allowed here)",
                "  runner:    tenant-api runner runs command jobs on this machine, e.g. a schedule with"
                ' "target": {"kind": "command", "ref": "echo", "args": ["hello"]}',
                "",
            ]
        ),
        flush=True,
    )
    from tenant_api.scheduler import start_in_thread

    _, stop_scheduler = start_in_thread(settings.database, settings=settings)
    runner = _start_runner(f"http://{host}:{port}", token["runner_token"])
    try:
        _serve(settings)
    finally:
        runner.terminate()
        try:
            runner.wait(10)
        except subprocess.TimeoutExpired:
            runner.kill()
        stop_scheduler()


def _start_runner(url: str, token: str) -> subprocess.Popen[bytes]:
    """The reference runner as a child process (what `tenant-api runner` is elsewhere);
    its token in the environment, never on a command line."""
    env = {**os.environ, "RUNNER_TOKEN": token}
    return subprocess.Popen([sys.executable, "-m", "tenant_api.runs.runner", "--url", url], env=env)


if __name__ == "__main__":
    print(json.dumps({"data_dir": str(DATA_DIR)}))
