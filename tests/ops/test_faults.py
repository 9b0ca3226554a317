"""Faults are a 503 with Retry-After, never a 500: the database unreachable, the pool out of
connections; /ready tells an orchestrator, /health stays liveness. (A real restart
under load: tests/ops/test_restart.py.)"""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import REGISTRY

from tenant_api import readiness
from tenant_api.app import create_app
from tests.support.security import PROBLEM


def assert_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert int(r.headers["retry-after"]) > 0


async def test_database_unreachable_is_503_and_not_ready(settings, app_client, tenant):
    # The right credentials on a socket where no server listens.
    def unreachable(url: str) -> str:
        return url.split("?")[0] + "?host=/nonexistent-socket-dir"

    database = settings.database
    client = await app_client(settings.with_database(  # every login of the API process
        url=unreachable(database.url), login_url=unreachable(database.login_url),
        jobs_url=unreachable(database.jobs_url), connect_timeout=1.0))
    labels = {"method": "GET", "route": "/v1/agents", "status": "503"}
    answered_503 = REGISTRY.get_sample_value("tenant_api_http_requests_total", labels) or 0
    for method, path in [("GET", "/v1/agents"), ("GET", "/v1/me"), ("POST", "/v1/auth/login")]:
        r = await client.request(method, path, headers=tenant.token_auth,
                                 json={"email": tenant.email, "password": tenant.password} if path.endswith("login") else None)
        assert_503(r)
    # the metrics count what the client got (a 503, not a 500); counts reach their
    # series at the observer's next flush (once a second while serving)
    client._transport.app.state.request_observer.flush()  # type: ignore[attr-defined]
    assert REGISTRY.get_sample_value("tenant_api_http_requests_total", labels) == answered_503 + 1
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["reason"] == "database unreachable"
    assert (await client.get("/health")).status_code == 200


async def test_pool_out_of_connections_is_503(settings, app_client, tenant):
    client = await app_client(settings.with_database(pool_size=1, pool_timeout=0.3))
    assert (await client.get("/v1/agents", headers=tenant.token_auth)).status_code == 200
    engine = client._transport.app.state.engine  # type: ignore[attr-defined]
    async with engine.connect():  # the only pooled connection, held
        for path in ("/v1/agents", "/v1/me", "/v1/organization"):
            assert_503(await client.get(path, headers=tenant.token_auth))
    assert (await client.get("/v1/agents", headers=tenant.token_auth)).status_code == 200


async def test_ready_when_migrated_and_not_when_behind(client, monkeypatch):
    r = await client.get("/ready")
    assert r.status_code == 200, r.text
    head = readiness.code_revisions().head
    assert r.json()["database_version"] == [head]
    # A code head the database has not reached: migrations are behind.
    behind = readiness.Revisions(head="9999", known=readiness.code_revisions().known | {"9999"})
    monkeypatch.setattr(readiness, "code_revisions", lambda: behind)
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["reason"] == "migrations behind" and r.headers["retry-after"]
    # A revision the code does not know: a newer deploy migrated first; this code still serves.
    ahead = readiness.Revisions(head="0000", known=frozenset({"0000"}))
    monkeypatch.setattr(readiness, "code_revisions", lambda: ahead)
    assert (await client.get("/ready")).status_code == 200


async def test_ready_is_never_rate_limited_and_not_ready_while_draining(settings):
    """Probes poll /ready from one address; on SIGTERM (ops.shutdown) the balancer must
    hear "not ready" while the process drains, /health still alive."""
    app = create_app(settings.with_rate_limit(anonymous_per_minute=2))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver.local") as c:
            for _ in range(5):
                r = await c.get("/ready")
                assert r.status_code == 200, r.text
                assert "ratelimit" not in r.headers
            app.state.drain.draining = True
            r = await c.get("/ready")
            assert r.status_code == 503 and r.json()["reason"] == "shutting down", r.text
            assert int(r.headers["retry-after"]) > 0
            assert (await c.get("/health")).status_code == 200
    finally:
        await app.state.engine.dispose()


async def test_concurrent_requests_beyond_the_pool_wait_or_get_503(settings, app_client, tenant):
    """Out of connections is a fault to retry, never a 500, even under a burst."""
    client = await app_client(settings.with_database(pool_size=2, pool_timeout=0.2))
    responses = await asyncio.gather(*(client.post("/v1/workspaces", headers=tenant.token_auth, json={"name": f"w{i}"})
                                       for i in range(40)))
    statuses = {r.status_code for r in responses}
    assert statuses <= {201, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert_503(r)
