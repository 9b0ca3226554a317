"""Rate limits (tenant_api.ops.ratelimit): a quota per credential on every route, per
client address without one, an organization's own quota, counts shared through a real
Redis, and the client address taken from trusted proxies only."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
from litestar.testing import AsyncTestClient

from tenant_api import cli
from tenant_api.app import create_app
from tenant_api.ops.metrics import RATE_LIMIT_STORE_ERRORS
from tenant_api.ops.ratelimit import credential_key
from tests.support.tenants import bearer, make_token, signup
from tests.support.security import as_request, attempt, openapi, operations
from tests.support.windows import inside_one_window

PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
async def _counts_inside_one_minute() -> None:
    """Every test here counts requests against per-minute quotas."""
    await inside_one_window(10)


def quota(r: httpx.Response) -> tuple[str, int, int]:
    m = re.fullmatch(r'"(\w+)";q=(\d+);w=(\d+)', r.headers["ratelimit-policy"])
    assert m, r.headers
    return m.group(1), int(m.group(2)), int(m.group(3))


def remaining(r: httpx.Response) -> int:
    m = re.fullmatch(r'"\w+";r=(\d+);t=(\d+)', r.headers["ratelimit"])
    assert m, r.headers
    assert 1 <= int(m.group(2)) <= 3600
    return int(m.group(1))


async def test_login_attempts_beyond_the_limit_get_429_problem(settings):
    app = create_app(settings.with_auth(auth_rate_per_minute=3))
    async with AsyncTestClient(app) as c:
        statuses = []
        for _ in range(5):
            r = await c.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong-password"})
            statuses.append(r.status_code)
            assert quota(r) == ("auth", 3, 60)
        assert statuses == [401, 401, 401, 429, 429]
        assert r.headers["content-type"].startswith(PROBLEM)
        body = r.json()
        assert body["status"] == 429 and body["type"] == "urn:tenant-api:problem:rate-limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60 and remaining(r) == 0


async def test_every_public_route_checking_a_secret_has_the_auth_quota(client, settings):
    """Passwords and mailed secrets (verification, invites) are guessed without a
    credential: each such route counts per address against the auth quota (one shared
    count), and the document's public operations are exactly these."""
    bodies = {
        "/v1/auth/signup": {"email": "x@example.com", "password": "short", "display_name": "x"},
        "/v1/auth/login": {"email": "nobody@example.com", "password": "wrong-password"},
        "/v1/auth/verify": {"token": "tver_" + "0" * 38},
        "/v1/invites/preview": {"invite_token": "tinv_" + "0" * 38},
        "/v1/invites/signup": {"invite_token": "tinv_" + "0" * 38, "password": "long-enough-pw", "display_name": "x"},
    }
    public = {path for _, path, op in operations(openapi(client)) if op.get("security") == []}
    assert public == set(bodies)
    for path, body in bodies.items():
        app = create_app(settings.with_auth(auth_rate_per_minute=2))
        async with AsyncTestClient(app) as c:
            statuses = []
            for _ in range(3):
                r = await c.post(path, json=body)
                assert quota(r) == ("auth", 2, 60), (path, r.headers)
                statuses.append(r.status_code)
            assert statuses[:2] != [429, 429] and statuses[2] == 429, (path, statuses)
            # one count for all of them: the address has used up its auth quota everywhere
            other = next(p for p in bodies if p != path)
            assert (await c.post(other, json=bodies[other])).status_code == 429, (path, other)


async def test_every_route_counts_per_credential(client, settings):
    t = await signup(client)
    other = await make_token(client, t, ["agents:read"])
    app = create_app(settings.with_rate_limit(requests=3, window_seconds=60))
    async with AsyncTestClient(app) as c:
        seen = []
        for path in ("/v1/me", "/v1/agents", f"/v1/agents/{uuid.uuid4()}"):  # 200, 200, 404: all count
            r = await c.get(path, headers=t.token_auth)
            seen.append((r.status_code, remaining(r)))
            assert quota(r) == ("credential", 3, 60)
        assert seen == [(200, 2), (200, 1), (404, 0)]
        r = await c.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "late"})
        assert r.status_code == 429 and r.headers["content-type"].startswith(PROBLEM)
        assert int(r.headers["retry-after"]) >= 1 and remaining(r) == 0
        # another credential of the same user and organization has its own count
        r = await c.get("/v1/agents", headers=bearer(other["token"]))
        assert r.status_code == 200 and remaining(r) == 2
        # a refused credential is counted too (before the database is asked), with headers
        for _ in range(3):
            r = await c.get("/v1/agents", headers=bearer("tapi_forged"))
            assert r.status_code == 401 and "ratelimit" in r.headers
        assert (await c.get("/v1/agents", headers=bearer("tapi_forged"))).status_code == 429
        # health is not limited
        r = await c.get("/health")
        assert r.status_code == 200 and "ratelimit" not in r.headers


async def test_an_idempotent_replay_counts_against_its_credential_with_fresh_headers(client, settings):
    """The limiter sits outside the idempotency middleware (app.py): a replay is a request
    of the same credential, counted in its quota (beyond it: 429, not the kept response),
    and it carries its own request id and the RateLimit headers of its own count."""
    t = await signup(client)
    app = create_app(settings.with_rate_limit(requests=3, window_seconds=60))
    headers = {**t.token_auth, "Idempotency-Key": str(uuid.uuid4())}
    body = {"project_id": t.project_id, "name": "once"}
    async with AsyncTestClient(app) as c:
        first = await c.post("/v1/agents", headers=headers, json=body)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        assert quota(first) == ("credential", 3, 60) and remaining(first) == 2
        again = await c.post("/v1/agents", headers={**headers, "X-Request-ID": "replay-1"}, json=body)
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert again.headers["x-request-id"] == "replay-1" != first.headers["x-request-id"]
        assert quota(again) == ("credential", 3, 60) and remaining(again) == 1
        third = await c.post("/v1/agents", headers=headers, json=body)
        assert third.headers["idempotent-replayed"] == "true" and remaining(third) == 0
        assert third.headers["x-request-id"] not in (first.headers["x-request-id"], "replay-1")
        over = await c.post("/v1/agents", headers=headers, json=body)
        assert over.status_code == 429 and over.headers["content-type"].startswith(PROBLEM)
        assert "idempotent-replayed" not in over.headers and int(over.headers["retry-after"]) >= 1
        assert over.headers["x-request-id"] and remaining(over) == 0
    agents = (await client.get("/v1/agents", headers=t.token_auth, params={"limit": 100})).json()["items"]
    assert [a["id"] for a in agents if a["name"] == "once"] == [first.json()["id"]]


async def test_an_organization_has_its_own_quota_set_by_operators(client, settings, database, admin_conn,
                                                                 api_conn, monkeypatch):
    t = await signup(client)
    monkeypatch.setenv("OWNER_DATABASE_URL", database.owner_url)
    await asyncio.to_thread(cli.main, ["rate-limit", t.organization_id, "--requests", "2", "--window", "30"])
    row = await admin_conn.fetchrow("select rate_limit_requests, rate_limit_window_seconds from organization"
                                    " where id = $1", uuid.UUID(t.organization_id))
    assert tuple(row) == (2, 30)
    audit = await admin_conn.fetchrow("select request_id, changes from token_audit_log where table_name ="
                                      " 'organization' and row_id = $1 and action = 'UPDATE' order by id desc"
                                      " limit 1", uuid.UUID(t.organization_id))
    assert audit["request_id"] == "operator:rate-limit"

    app = create_app(settings.with_rate_limit(requests=1000, window_seconds=60))
    async with AsyncTestClient(app) as c:
        # The first request teaches the limiter the credential's organization; its quota
        # is read in the background and applies from then on.
        policies = []
        for _ in range(20):
            r = await c.get("/v1/me", headers=t.token_auth)
            policies.append(quota(r))
            if quota(r) == ("credential", 2, 30):
                break
            await asyncio.sleep(0.1)
        assert policies[0] == ("credential", 1000, 60) and policies[-1] == ("credential", 2, 30), policies
        statuses = [(await c.get("/v1/me", headers=t.token_auth)).status_code for _ in range(3)]
        assert 429 in statuses

    # tenants read it, never change it: the API role may update the name only
    async with as_request(api_conn, t.token):
        assert await api_conn.fetchval("select rate_limit_requests from organization") == 2
        _, sqlstate = await attempt(api_conn, "update organization set rate_limit_requests = 1000000")
        assert sqlstate == "42501"
    assert await admin_conn.fetchval("select rate_limit_requests from organization where id = $1",
                                     uuid.UUID(t.organization_id)) == 2
    # ...nor may the API role call the operators' function
    _, sqlstate = await attempt(api_conn, "select auth.set_rate_limit($1, 1000000, 1)", uuid.UUID(t.organization_id))
    assert sqlstate == "42501"

    await asyncio.to_thread(cli.main, ["rate-limit", t.organization_id, "--clear"])
    assert await admin_conn.fetchval("select rate_limit_requests from organization where id = $1",
                                     uuid.UUID(t.organization_id)) is None


async def test_counts_are_shared_through_redis(client, settings, redis_url):
    """Two app instances (two workers, two machines) share one count per credential."""
    t = await signup(client)
    limited = settings.with_rate_limit(requests=4, window_seconds=60, redis_url=redis_url)
    first, second = create_app(limited), create_app(limited)
    async with AsyncTestClient(first) as a, AsyncTestClient(second) as b:
        statuses = [(await (a if i % 2 == 0 else b).get("/v1/me", headers=t.token_auth)).status_code for i in range(6)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        # memory counters would have let each instance count to 4 on its own
        import redis.asyncio as redis

        r = redis.Redis.from_url(redis_url)
        try:
            # this credential's own count (other tests' credentials share the server)
            keys = [k async for k in r.scan_iter(f"tenant-api:rl:{credential_key(t.token.encode())}:*")]
            assert len(keys) == 1 and int(await r.get(keys[0])) == 6, keys
        finally:
            await r.aclose()


async def test_an_unreachable_redis_lets_requests_through(client, settings, tmp_path):
    t = await signup(client)
    before = RATE_LIMIT_STORE_ERRORS._value.get()
    app = create_app(settings.with_rate_limit(requests=1, redis_url=f"unix://{tmp_path}/absent.sock"))
    async with AsyncTestClient(app) as c:
        for _ in range(3):
            r = await c.get("/v1/me", headers=t.token_auth)
            assert r.status_code == 200 and "ratelimit" not in r.headers
    assert RATE_LIMIT_STORE_ERRORS._value.get() >= before + 3


async def test_the_client_address_comes_from_trusted_proxies_only(settings):
    async def logins(app, forwarded_for: list[str]) -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            return [(await c.post("/v1/auth/login", headers={"X-Forwarded-For": xff},
                                  json={"email": "x@example.com", "password": "wrong-password"})).status_code
                    for xff in forwarded_for]

    clients = ["203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.3"]
    await inside_one_window(25)  # nine logins, argon2 each
    untrusted = create_app(settings.with_auth(auth_rate_per_minute=2))
    trusted = create_app(settings.with_auth(auth_rate_per_minute=2).with_server(trusted_proxies=("10.0.0.0/8",)))
    try:
        # Not a trusted proxy: X-Forwarded-For is ignored, every attempt is the peer's.
        assert await logins(untrusted, clients) == [401, 401, 429, 429]
        # Behind a trusted proxy: each forwarded client has its own count.
        assert await logins(trusted, clients) == [401, 401, 401, 401]
        assert await logins(trusted, ["203.0.113.1"]) == [429]
    finally:
        await untrusted.state.engine.dispose()
        await trusted.state.engine.dispose()


async def test_usage_records_carry_the_forwarded_address(client, settings, admin_conn):
    t = await signup(client)
    app = create_app(settings.with_server(trusted_proxies=("127.0.0.1",)))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            r = await c.get("/v1/me", headers={**t.token_auth, "X-Forwarded-For": "198.51.100.7"})
            assert r.status_code == 200
        app.state.usage.flush()
        ip = await admin_conn.fetchval("select host(client_ip) from token_usage where request_id = $1",
                                       r.headers["x-request-id"])
        assert ip == "198.51.100.7"
    finally:
        app.state.usage.close()
        await app.state.engine.dispose()


