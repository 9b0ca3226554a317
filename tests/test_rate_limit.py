"""Signup and login are rate limited per client IP (Litestar's RateLimitConfig)."""

from litestar.testing import AsyncTestClient

from tenant_api.app import create_app


async def test_login_attempts_beyond_the_limit_get_429_problem(settings):
    app = create_app(settings.with_auth(auth_rate_per_minute=3))
    async with AsyncTestClient(app) as c:
        statuses = []
        for _ in range(5):
            r = await c.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong-password"})
            statuses.append(r.status_code)
        assert statuses == [401, 401, 401, 429, 429]
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 429
