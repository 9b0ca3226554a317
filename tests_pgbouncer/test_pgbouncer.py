"""One request = one transaction = one context, even when every request of every
organization shares a single server connection through PgBouncer (transaction mode)."""

from __future__ import annotations

import asyncio

import asyncpg
from litestar.testing import AsyncTestClient

from tenant_api.app import create_app
from tenant_api.auth.credentials import token_hash
from tenant_api.settings import asyncpg_url
from tests.conftest import signup


async def test_interleaved_organizations_through_one_server_connection(client, settings, bouncer_url):
    a, b = await signup(client), await signup(client)
    app = create_app(settings.with_database(url=asyncpg_url(bouncer_url), pgbouncer=True, pool_size=8,
                                            max_overflow=0))
    async with AsyncTestClient(app) as c:

        async def work(t, n):
            names = []
            for i in range(n):
                r = await c.post("/v1/agents", headers=t.h, json={"project_id": t.project_id, "name": f"bnc-{i}"})
                assert r.status_code == 201, r.text
                names.append(r.json()["id"])
                r = await c.get("/v1/agents?limit=200", headers=t.h)
                assert r.status_code == 200, r.text
                seen = {item["project_id"] for item in r.json()["items"]}
                assert seen <= {t.project_id}, "saw another organization's agents"
            return names

        ids_a, ids_b = await asyncio.gather(work(a, 15), work(b, 15))
        r = await c.get("/v1/agents?limit=200", headers=a.h)
        assert {i["id"] for i in r.json()["items"]} == set(ids_a)
        r = await c.get("/v1/agents?limit=200", headers=b.h)
        assert {i["id"] for i in r.json()["items"]} == set(ids_b)
        for agent_id in ids_b[:3]:
            assert (await c.get(f"/v1/agents/{agent_id}", headers=a.h)).status_code == 404


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
