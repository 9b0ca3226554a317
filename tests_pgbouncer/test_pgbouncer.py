"""One request = one transaction = one context, even when every request of every
organization shares a single server connection through PgBouncer (transaction mode)."""

from __future__ import annotations

import asyncio

import asyncpg
from litestar.testing import AsyncTestClient

from tenant_api.app import create_app
from tenant_api.auth.credentials import token_hash
from tenant_api.settings import asyncpg_url
from tests.support.tenants import signup


async def test_interleaved_organizations_through_one_server_connection(client, settings, bouncer_url):
    a, b = await signup(client), await signup(client)
    app = create_app(settings.with_database(url=asyncpg_url(bouncer_url), pgbouncer=True, pool_size=8,
                                            max_overflow=0))
    async with AsyncTestClient(app) as c:

        async def work(tenant, n):
            names = []
            for i in range(n):
                r = await c.post("/v1/agents", headers=tenant.token_auth, json={"project_id": tenant.project_id, "name": f"bnc-{i}"})
                assert r.status_code == 201, r.text
                names.append(r.json()["id"])
                r = await c.get("/v1/agents?limit=200", headers=tenant.token_auth)
                assert r.status_code == 200, r.text
                seen = {item["project_id"] for item in r.json()["items"]}
                assert seen <= {tenant.project_id}, "saw another organization's agents"
            return names

        ids_a, ids_b = await asyncio.gather(work(a, 15), work(b, 15))
        r = await c.get("/v1/agents?limit=200", headers=a.token_auth)
        assert {i["id"] for i in r.json()["items"]} == set(ids_a)
        r = await c.get("/v1/agents?limit=200", headers=b.token_auth)
        assert {i["id"] for i in r.json()["items"]} == set(ids_b)
        for agent_id in ids_b[:3]:
            assert (await c.get(f"/v1/agents/{agent_id}", headers=a.token_auth)).status_code == 404


async def test_context_does_not_survive_the_transaction_on_the_shared_connection(client, bouncer_url):
    a = await signup(client)
    first = await asyncpg.connect(bouncer_url, statement_cache_size=0)
    second = await asyncpg.connect(bouncer_url, statement_cache_size=0)
    try:
        async with first.transaction():
            row = await first.fetchrow("select status from auth.begin_request($1, null, null, 'bnc')",
                                       token_hash(a.token))
            assert row["status"] == "ok"
            assert await first.fetchval("select count(*) from agent") >= 0
            pid = await first.fetchval("select pg_backend_pid()")
        # Same server connection (pool size 1), next client: no context, no rows.
        assert await second.fetchval("select pg_backend_pid()") == pid
        assert await second.fetchval("select current_setting('app.organization_id', true)") in ("", None)
        assert await second.fetchval("select count(*) from project") == 0
        assert await second.fetchval("select count(*) from platform_token") == 0
    finally:
        await first.close()
        await second.close()


async def test_claims_long_polls_and_idempotency_keys_through_one_server_connection(client, settings, bouncer_url):
    """Behind PgBouncer (transaction mode): a waiting claim is woken through
    LISTEN_DATABASE_URL (LISTEN needs a direct connection), a claim with an
    Idempotency-Key is replayed and its twin in flight refused (transaction-level advisory
    locks), and nothing leaks between the organizations sharing the server connection."""
    import uuid

    import httpx

    from tests.support.tenants import make_token

    a, b = await signup(client), await signup(client)
    runner_a = {"Authorization": f"Bearer {(await make_token(client, a, ['tasks:write']))['token']}"}
    app = create_app(settings.with_database(url=asyncpg_url(bouncer_url), pgbouncer=True, pool_size=4,
                                            max_overflow=0, listen_url=settings.database.url)
                     .with_audit(record_usage=False))  # (its writer thread would outlive the bouncer)
    cmd = {"kind": "command", "ref": "true"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bouncer.local",
                                 timeout=30) as c:
        b_job = (await c.post("/v1/jobs", headers=b.token_auth, json={"project_id": b.project_id, "target": cmd})).json()
        waiting = asyncio.create_task(c.post("/v1/jobs/claim", headers=runner_a, json={"wait_seconds": 10}))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # B's job is not A's
        job = (await c.post("/v1/jobs", headers=a.token_auth, json={"project_id": a.project_id, "target": cmd})).json()
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        r = await waiting
        assert r.status_code == 200 and r.json()["job"]["id"] == job["id"] and loop.time() - queued_at < 2.5
        assert app.state.run_queue.listening

        second = (await c.post("/v1/jobs", headers=a.token_auth, json={"project_id": a.project_id, "target": cmd})).json()
        key = {**runner_a, "Idempotency-Key": uuid.uuid4().hex}
        first = await c.post("/v1/jobs/claim", headers=key, json={})
        again = await c.post("/v1/jobs/claim", headers=key, json={})
        assert first.status_code == again.status_code == 200 and again.json() == first.json()
        assert first.json()["job"]["id"] == second["id"]
        assert (await c.post("/v1/jobs/claim", headers=runner_a, json={})).status_code == 204
        assert (await c.get(f"/v1/jobs/{b_job['id']}", headers=b.token_auth)).json()["status"] == "queued"
    await app.state.engine.dispose()
    await app.state.run_queue.close()
