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
from collections.abc import Callable
import subprocess
import sys
from pathlib import Path

from tenant_api.db.policies import PROJECT_ROOT
from tenant_api.settings import Settings, asyncpg_url

DATA_DIR = Path(os.environ.get("TENANT_API_DATA", PROJECT_ROOT / ".data"))
DEMO_EMAIL = "owner@demo.example"


def _secret_file(name: str, make: Callable[[], str]) -> str:
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
        # A developer's sandbox: one password for every login (each role still has only its own grants).
        result = asyncio.run(bootstrap(admin_url, database="tenant", owner_password=db_password,
                                       api_password=db_password, worker_password=db_password,
                                       jobs_password=db_password, login_password=db_password))
        settings = settings.with_database(url=asyncpg_url(result.api_url), owner_url=asyncpg_url(result.owner_url),
                                          worker_url=asyncpg_url(result.worker_url),
                                          jobs_url=asyncpg_url(result.jobs_url),
                                          login_url=asyncpg_url(result.login_url))
    if settings.database.owner_url:
        migrate.upgrade(settings.database.owner_url,
                        lock_timeout_seconds=settings.database.migration_lock_timeout_seconds)
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
    from tenant_api.scopes import ROLE_SCOPES

    async with AsyncTestClient(create_app(settings)) as client:
        login = await client.post("/v1/auth/login", json={"email": DEMO_EMAIL, "password": password})
        if login.status_code == 401:  # first start (signing up again later could claim the address)
            signup = await client.post("/v1/auth/signup",
                                       json={"email": DEMO_EMAIL, "password": password, "display_name": "Demo Owner"})
            if signup.status_code != 201:
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
    import signal
    import sys

    from tenant_api.ops.logs import configure
    from tenant_api.server import serve

    # A developer's terminal: classic log lines unless LOG_FORMAT says otherwise.
    dev_env = {"LOG_FORMAT": "text", **os.environ}
    configure(Settings.from_env(dev_env).observability)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = prepare_database()
    settings = settings.with_observability(log_format=dev_env["LOG_FORMAT"],
                                           metrics_token=settings.observability.metrics_token
                                           or _secret_file("metrics_token", lambda: secrets.token_urlsafe(24)))
    if not settings.invites.smtp_url:
        # No mail server on a developer's machine: invite mails, accept link and secret
        # included, go to this terminal (tenant_api.invites.mailer). Never in `serve`.
        settings = settings.with_invites(log_links=True, mail_dir=str(DATA_DIR / "mail"))
    # A developer's webhook receiver listens on this machine: let deliveries reach it.
    settings = settings.with_webhooks(allow_private_targets=True)
    if "SCHEDULE_MIN_INTERVAL_SECONDS" not in os.environ:
        # Trying schedules out (scripts/scenario.py: every 2 seconds) beats the quota's default.
        settings = settings.with_schedules(min_interval_seconds=1)
    password = _secret_file("demo_password", lambda: secrets.token_urlsafe(12))
    token = asyncio.run(demo_token(settings, password))
    host, port = settings.server.host, settings.server.port
    print(
        "\n".join(
            [
                "",
                "tenant-api is ready.",
                f"  docs:      {settings.server.base_url}/docs",
                f"  login:     {DEMO_EMAIL} / {password}",
                f"  API token: {token['token']}   (all owner scopes, expires {token['expires_at']})",
                f"  try:       curl -H 'Authorization: Bearer {token['token']}' http://{host}:{port}/v1/me",
                f"  metrics:   curl -H 'Authorization: Bearer {settings.observability.metrics_token}' "
                f"http://{host}:{port}/metrics",
                "  mail:      " + ("sent through SMTP_URL" if settings.invites.smtp_url
                                    else f"printed here and kept in {DATA_DIR / 'mail'}/<address>.txt "
                                         "(set SMTP_URL to send)"),
                "  walkthroughs: docs/walkthroughs.md",
                "  scheduler: running in the background (tenant-api scheduler in production);"
                " it delivers webhooks too (local receivers allowed here)",
                "  runner:    tenant-api runner runs command jobs on this machine, e.g. a schedule with"
                ' "target": {"kind": "command", "ref": "echo", "args": ["hello"]}',
                "  stop:      Ctrl-C (stops the embedded PostgreSQL too; its data stays in .data/)",
                "",
            ]
        ),
        flush=True,
    )
    from tenant_api.scheduler import start_in_thread

    worker = settings.database.worker_database()  # the scheduler process's own login, as in production
    _, stop_scheduler = start_in_thread(worker, settings=settings.with_database(**vars(worker)))
    runner = _start_runner(f"http://{host}:{port}", token["runner_token"])
    try:
        serve(settings)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        runner.terminate()
        try:
            runner.wait(10)
        except subprocess.TimeoutExpired:
            runner.kill()
        stop_scheduler()
        _stop_embedded()
    sys.exit(0)


def _stop_embedded() -> None:
    from tenant_api.db import embedded

    if embedded.stop(DATA_DIR / "pg"):
        print(f"PostgreSQL stopped; its data stays in {DATA_DIR} for the next `make run` "
              f"(to start afresh: rm -rf {DATA_DIR}).", flush=True)


def _start_runner(url: str, token: str) -> subprocess.Popen[bytes]:
    """The reference runner as a child process (what `tenant-api runner` is elsewhere);
    its token in the environment, never on a command line."""
    env = {**os.environ, "RUNNER_TOKEN": token}
    # a fixed argv: this interpreter running our own module, against the URL the dev server chose
    return subprocess.Popen([sys.executable, "-m", "tenant_api.runs.runner", "--url", url], env=env)  # noqa: S603


if __name__ == "__main__":
    print(json.dumps({"data_dir": str(DATA_DIR)}))
