"""Idempotency-Key on POST (docs/idempotency.md): replay, 422 for another request, 409 while
the first is in flight, per credential, 24 hours, nothing readable at rest."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import asyncpg
import pytest

from tenant_api.idempotency import ServerKeys
from tests.support.database import connect
from tests.support.tenants import bearer, make_token, signup
from tests.support.security import as_request

U = uuid.UUID


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def token_rows(admin_conn, tenant) -> int:
    return await admin_conn.fetchval("select count(*) from platform_token where organization_id = $1 and kind = 'api'",
                                     U(tenant.organization_id))


async def test_the_same_request_replays_the_first_response(client, admin_conn):
    t = await signup(client)
    key = str(uuid.uuid4())
    before = await token_rows(admin_conn, t)
    body = {"name": "ci", "scopes": ["agents:read"]}
    first = await client.post("/v1/tokens", headers=keyed(t.session_auth, key), json=body)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # A retry after a lost response: the same secret, not a second token the caller never saw.
    again = await client.post("/v1/tokens", headers=keyed(t.session_auth, key), json={"scopes": ["agents:read"], "name": "ci"})
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() and again.json()["token"] == first.json()["token"]
    assert again.headers["content-type"].startswith("application/json")
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert await token_rows(admin_conn, t) == before + 1
    # The replayed token works (it is the one that was made).
    assert (await client.get("/v1/agents", headers=bearer(first.json()["token"]))).status_code == 200


async def test_the_same_key_for_another_request_is_a_422(client):
    t = await signup(client)
    key = uuid.uuid4().hex
    r = await client.post("/v1/agents", headers=keyed(t.token_auth, key), json={"project_id": t.project_id, "name": "one"})
    assert r.status_code == 201
    for path, body in (("/v1/agents", {"project_id": t.project_id, "name": "two"}),
                       ("/v1/tasks", {"project_id": t.project_id, "summary": "one"})):
        r = await client.post(path, headers=keyed(t.token_auth, key), json=body)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "Idempotency-Key" and "different request" in r.json()["detail"]


async def test_a_second_request_while_the_first_runs_is_a_409(client, concurrent_client, admin_conn, database):
    """The first request is held inside its transaction (its agent's foreign key waits for
    a row lock the test holds); the second, with the same key, is refused at once."""
    t = await signup(client)
    key = uuid.uuid4().hex
    body = {"project_id": t.project_id, "name": "slow"}
    # (auth.begin_request notes a token's use once a minute, with an UPDATE that would wait
    # for the first request's transaction too: let that happen now.)
    assert (await concurrent_client.get("/v1/agents", headers=t.token_auth)).status_code == 200
    blocker = await connect(database.admin_url)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("select 1 from project where id = $1 for update", U(t.project_id))
    first = asyncio.create_task(concurrent_client.post("/v1/agents", headers=keyed(t.token_auth, key), json=body))
    try:
        await wait_until_blocked(admin_conn)
        second = await concurrent_client.post("/v1/agents", headers=keyed(t.token_auth, key), json=body)
        assert second.status_code == 409, second.text
        assert second.json()["errors"][0]["field"] == "Idempotency-Key" and "in progress" in second.json()["detail"]
    finally:
        await tx.rollback()
        await blocker.close()
    made = await first
    assert made.status_code == 201, made.text
    third = await concurrent_client.post("/v1/agents", headers=keyed(t.token_auth, key), json=body)
    assert third.status_code == 201 and third.json() == made.json() and third.headers["idempotent-replayed"] == "true"
    assert await admin_conn.fetchval("select count(*) from agent where organization_id = $1 and name = 'slow'",
                                     U(t.organization_id)) == 1


async def wait_until_blocked(admin_conn: asyncpg.Connection) -> None:
    for _ in range(200):
        if await admin_conn.fetchval("select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                                     " and usename = 'tenant_api'"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the first request never waited on the lock")


async def test_keys_belong_to_a_credential(client, admin_conn):
    t = await signup(client)
    other = bearer((await make_token(client, t, ["tasks:write", "org:read"]))["token"])
    key = uuid.uuid4().hex
    body = {"project_id": t.project_id, "summary": "twice"}
    a = await client.post("/v1/tasks", headers=keyed(t.token_auth, key), json=body)
    b = await client.post("/v1/tasks", headers=keyed(other, key), json=body)
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers


async def test_keys_live_24_hours(client, admin_conn):
    t = await signup(client)
    key = uuid.uuid4().hex
    body = {"project_id": t.project_id, "summary": "daily"}
    first = await client.post("/v1/tasks", headers=keyed(t.token_auth, key), json=body)
    row = await admin_conn.fetchrow("select created_at, expires_at from idempotency_key where token_id = $1"
                                    " order by created_at desc limit 1", U(t.token_id))
    assert (row["expires_at"] - row["created_at"]).total_seconds() == 24 * 3600
    await admin_conn.execute("update idempotency_key set expires_at = now() - interval '1 second' where token_id = $1",
                             U(t.token_id))
    again = await client.post("/v1/tasks", headers=keyed(t.token_auth, key), json=body)
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in again.headers
    # ... and the key is taken again, by the new response
    third = await client.post("/v1/tasks", headers=keyed(t.token_auth, key), json=body)
    assert third.json()["id"] == again.json()["id"]
    # Expired keys are purged by the scheduler process (auth.purge_idempotency_keys).
    await admin_conn.execute("update idempotency_key set expires_at = now() - interval '1 second' where token_id = $1",
                             U(t.token_id))
    worker = await connect(client.app.state.settings.database.worker_url)  # the scheduler process's login
    try:
        assert await worker.fetchval("select auth.purge_idempotency_keys(100000)") >= 1
    finally:
        await worker.close()
    assert await admin_conn.fetchval("select count(*) from idempotency_key where token_id = $1", U(t.token_id)) == 0


async def test_failures_are_not_kept(client):
    """A failed request changed nothing: a retry with the same key runs again."""
    t = await signup(client)
    key = uuid.uuid4().hex
    r = await client.post("/v1/agents", headers=keyed(t.token_auth, key), json={"project_id": str(uuid.uuid4()), "name": "x"})
    assert r.status_code == 422
    r = await client.post("/v1/agents", headers=keyed(t.token_auth, key), json={"project_id": t.project_id, "name": "x"})
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers


async def test_secrets_in_kept_responses_are_not_readable_at_rest(client, admin_conn, settings):
    t = await signup(client)
    key = f"token-{uuid.uuid4()}"
    r = await client.post("/v1/tokens", headers=keyed(t.session_auth, key), json={"name": "at rest", "scopes": ["agents:read"]})
    assert r.status_code == 201
    secret = r.json()["token"]
    row = await admin_conn.fetchrow("select * from idempotency_key where token_id = $1",
                                    U(r.json()["created_by_token_id"]))
    assert row is not None and row["status_code"] == 201 and row["path"] == "/v1/tokens"
    dump = " ".join(str(v) for v in row.values()).encode() + b"".join(v for v in row.values() if isinstance(v, bytes))
    for needle in (secret.encode(), secret[5:20].encode(), key.encode(), hashlib.sha256(key.encode()).digest(),
                   b"tapi_"):
        assert needle not in dump, needle
    # The control: the server key and the Idempotency-Key open it (so the check above is not vacuous).
    keys = ServerKeys(settings.auth.jwt_secret)
    org, token = U(t.organization_id), row["token_id"]
    assert row["key_hash"] == keys.key_hash(org, token, key)
    assert secret.encode() in keys.open(key, org, token, row["key_hash"], row["response"])
    with pytest.raises(Exception):  # noqa: B017 -- a wrong key does not open it (AES-GCM authenticates)
        keys.open(key + "x", org, token, row["key_hash"], row["response"])
    # Nor is it in the audit trail (the table is not audited; nothing else copies the body).
    assert not await admin_conn.fetchval("select count(*) from token_audit_log where changes::text like $1",
                                         f"%{secret}%")


async def test_keys_are_invisible_to_other_credentials(client, api_conn):
    t = await signup(client)
    other = await make_token(client, t, ["tokens:write", "agents:write"])
    await client.post("/v1/agents", headers=keyed(t.token_auth, uuid.uuid4().hex),
                      json={"project_id": t.project_id, "name": "k"})
    async with as_request(api_conn, t.token):
        assert await api_conn.fetchval("select count(*) from idempotency_key") >= 1
    async with as_request(api_conn, other["token"]):
        assert await api_conn.fetchval("select count(*) from idempotency_key") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute("insert into idempotency_key (organization_id, token_id, key_hash, request_hash,"
                                   " method, path, status_code, response, expires_at) values"
                                   " ($1, $2, sha256('k'), sha256('r'), 'POST', '/x', 201, '\\x00', now())",
                                   U(t.organization_id), U(t.token_id))


async def test_a_claim_is_replayed_not_repeated(client, concurrent_client):
    """A runner whose claim response was lost retries with the same key: it gets the same
    job and claim secret back, and no second job is taken."""
    t = await signup(client)
    runner = bearer((await make_token(client, t, ["tasks:write"]))["token"])
    for _ in range(2):
        await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id,
                                                         "target": {"kind": "command", "ref": "true"}})
    key = uuid.uuid4().hex
    first = await concurrent_client.post("/v1/jobs/claim", headers=keyed(runner, key), json={"wait_seconds": 1})
    again = await concurrent_client.post("/v1/jobs/claim", headers=keyed(runner, key), json={"wait_seconds": 1})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    queued = (await client.get("/v1/jobs", headers=t.token_auth, params={"status": "queued"})).json()["items"]
    assert len(queued) == 1
    # the replayed secret is the live one
    r = await concurrent_client.post(f"/v1/jobs/{first.json()['job']['id']}/heartbeat", headers=runner,
                                     json={"claim_secret": again.json()["claim_secret"]})
    assert r.status_code == 200


async def test_finish_and_log_retries_do_not_repeat(client):
    t = await signup(client)
    runner = bearer((await make_token(client, t, ["tasks:write"]))["token"])
    job = (await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id,
                                                            "target": {"kind": "command", "ref": "true"}})).json()
    claim = (await client.post("/v1/jobs/claim", headers=runner, json={})).json()
    body = {"claim_secret": claim["claim_secret"], "data": "once\n"}
    key = uuid.uuid4().hex
    for _ in range(3):
        r = await client.post(f"/v1/jobs/{job['id']}/logs", headers=keyed(runner, key), json=body)
        assert r.status_code == 201 and r.json()["seq"] == 1
    key = uuid.uuid4().hex
    for _ in range(2):
        r = await client.post(f"/v1/jobs/{job['id']}/finish", headers=keyed(runner, key),
                              json={"claim_secret": claim["claim_secret"], "exit_code": 0})
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
    logs = (await client.get(f"/v1/jobs/{job['id']}/logs", headers=t.token_auth)).json()["items"]
    assert [c["data"] for c in logs] == ["once\n"]


@pytest.mark.parametrize("key", [b"", b"x" * 256, "naïve".encode("latin-1"), b"tab\there"])
async def test_malformed_keys_are_refused(client, key):
    t = await signup(client)
    headers = {**t.token_auth, "Idempotency-Key": key}
    r = await client.post("/v1/agents", headers=headers, json={"project_id": t.project_id, "name": "m"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Idempotency-Key", r.text


async def test_the_key_is_ignored_where_it_does_not_apply(client, admin_conn):
    """GET, PATCH, DELETE (idempotent by nature) and the public POSTs (no credential to keep
    a key for) ignore it."""
    t = await signup(client)
    key = uuid.uuid4().hex
    agent = (await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "p"})).json()
    for _ in range(2):
        assert (await client.get("/v1/agents", headers=keyed(t.token_auth, key))).status_code == 200
        r = await client.patch(f"/v1/agents/{agent['id']}", headers=keyed(t.token_auth, key), json={"name": "q"})
        assert r.status_code == 200
    login = {"email": t.email, "password": t.password}
    a = await client.post("/v1/auth/login", headers={"Idempotency-Key": key}, json=login)
    b = await client.post("/v1/auth/login", headers={"Idempotency-Key": key}, json=login)
    assert a.status_code == b.status_code == 200 and a.json()["access_token"] != b.json()["access_token"]
    assert not await admin_conn.fetchval("select count(*) from idempotency_key where token_id = $1", U(t.token_id))


async def test_a_failed_commit_answers_with_a_problem_not_the_response(client, settings):
    """The response is sent only after the change and the stored response are committed."""
    from tenant_api.idempotency import PendingRequest

    t = await signup(client)
    original = PendingRequest.store

    async def broken(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    PendingRequest.store = broken  # type: ignore[method-assign]
    try:
        r = await client.post("/v1/agents", headers=keyed(t.token_auth, uuid.uuid4().hex),
                              json={"project_id": t.project_id, "name": "never"})
    finally:
        PendingRequest.store = original  # type: ignore[method-assign]
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")
    names = [a["name"] for a in (await client.get("/v1/agents?limit=200", headers=t.token_auth)).json()["items"]]
    assert "never" not in names


def test_every_authenticated_post_binds_its_transaction(client):
    """The key is tied to the transaction that makes the change where that transaction
    begins (auth.request.provide_db; a claim's attempts bind themselves; a fast generic
    create's write_service hands a keyed POST to provide_db). A POST route that opened its
    transactions some other way would silently ignore the key: none may."""
    import inspect

    from tenant_api.auth.request import is_public, provide_db

    unbound, checked = [], 0
    for route in client.app.routes:
        for handler in getattr(route, "route_handlers", []):
            if "POST" not in handler.http_methods or is_public(handler):
                continue
            provided = handler.resolve_dependencies()
            needed, stack = set(), list(handler.parsed_fn_signature.parameters)
            while stack:
                name = stack.pop()
                if name in needed:
                    continue
                needed.add(name)
                if name in provided:
                    stack += list(inspect.signature(provided[name].dependency).parameters)
            if any(getattr(provided[n].dependency, "keyed_through", None) is provide_db
                   for n in needed if n in provided):
                needed.add("db")
            checked += 1
            if not needed & {"db", "first"}:
                unbound.append(f"POST {route.path}")
    assert checked >= 20 and not unbound, (checked, unbound)
