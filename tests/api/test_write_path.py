"""The generic writes (resources.base.WriteQueries): SQL compiled once per shape on the
request's own connection, in its transaction. Counted on the server connection itself:
a create of a resource without hooks is one statement that checks its parents, a status
move reads its row under the lock once; and every answer the ORM path gave stays (422
naming the field, 404 invisible, 409 for a move the lifecycle refuses, the audit row)."""

import uuid


from tests.support.statements import request_statements
from tests.support.tenants import signup


async def _statements(settings, t, method: str, path: str, body: dict) -> tuple[int, list[str]]:
    """The request's statements (the fast write path runs auth.begin_request on the
    connection like any statement: it is reported too)."""
    return await request_statements(settings, t, method, path, body)


async def test_create_is_one_statement_with_its_parent_check(client, settings, admin_conn):
    t = await signup(client)
    status, seen = await _statements(settings, t, "POST", "/v1/agents",
                                     {"project_id": t.project_id, "name": "counted"})
    assert status == 201, seen
    # BEGIN, auth.begin_request, the insert with its parent check, COMMIT: no session
    assert len(seen) == 4 and seen[0].upper().startswith("BEGIN") and seen[-1].upper().startswith("COMMIT"), seen
    assert "auth.begin_request" in seen[1], seen
    assert seen[2].startswith("INSERT INTO agent") and "WHERE EXISTS" in seen[2], seen
    # the same row, with its audit row, as the ORM wrote it
    row = await admin_conn.fetchrow("select id, type, status from agent where name = 'counted'")
    assert (row["type"], row["status"]) == ("assistant", "active")
    assert await admin_conn.fetchval(
        "select count(*) from token_audit_log where row_id = $1 and action = 'INSERT'", row["id"]) == 1


async def test_create_with_an_invisible_parent_is_422_naming_it(client):
    t, other = await signup(client), await signup(client)
    r = await client.post("/v1/agents", headers=t.token_auth, json={"project_id": other.project_id, "name": "x"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_id", r.text
    r = await client.post("/v1/agents", headers=t.token_auth,
                          json={"project_id": t.project_id, "name": "x", "template_id": str(uuid.uuid4())})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "template_id", r.text


async def test_status_move_reads_its_row_once_under_the_lock(client, settings):
    t = await signup(client)
    r = await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": "counted"})
    assert r.status_code == 201, r.text
    task = r.json()
    status, seen = await _statements(settings, t, "PATCH", f"/v1/tasks/{task['id']}", {"status": "in_progress"})
    assert status == 200, seen
    # BEGIN, auth.begin_request, the row under the lock, the update, COMMIT
    assert len(seen) == 5 and "auth.begin_request" in seen[1], seen
    assert seen[2].startswith("SELECT") and seen[2].endswith("FOR UPDATE"), seen
    assert seen[3].startswith("UPDATE task SET status") and "RETURNING" in seen[3], seen
    # the lifecycle still judges the move against the locked row
    r = await client.patch(f"/v1/tasks/{task['id']}", headers=t.token_auth, json={"status": "todo"})
    assert r.status_code == 200 and r.json()["status"] == "todo"
    assert r.json()["updated_at"] >= task["updated_at"]
    r = await client.patch(f"/v1/tasks/{task['id']}", headers=t.token_auth, json={"status": "done"})
    assert r.status_code == 409 and r.json()["from"] == "todo" and r.json()["to"] == "done", r.text


async def test_update_and_delete_of_invisible_rows_are_404(client):
    t, other = await signup(client), await signup(client)
    r = await client.post("/v1/tasks", headers=other.token_auth, json={"project_id": other.project_id, "summary": "theirs"})
    theirs = r.json()["id"]
    assert (await client.patch(f"/v1/tasks/{theirs}", headers=t.token_auth, json={"status": "in_progress"})).status_code == 404
    assert (await client.patch(f"/v1/tasks/{theirs}", headers=t.token_auth, json={"summary": "mine"})).status_code == 404
    assert (await client.delete(f"/v1/tasks/{theirs}", headers=t.token_auth)).status_code == 404
    r = await client.get(f"/v1/tasks/{theirs}", headers=other.token_auth)
    assert r.status_code == 200 and (r.json()["summary"], r.json()["status"]) == ("theirs", "todo")


async def test_a_refused_body_ends_the_transaction_its_dependency_began(settings, app_client, tenant, admin_conn):
    """The fast write routes begin their transaction before the body is validated (so a
    revoked token is a 401 before a bad body is a 422): a 422 body must still end it,
    rolled back, its connection returned. With a pool of one connection, every request
    after a refused body would wait and get 503 if one were kept."""
    client = await app_client(settings.with_database(pool_size=1, pool_timeout=0.5))
    r = await client.post("/v1/tasks", headers=tenant.token_auth, json={"project_id": tenant.project_id, "summary": "s"})
    assert r.status_code == 201, r.text
    task_id = r.json()["id"]
    before = await admin_conn.fetchval("select count(*) from token_audit_log where organization_id = $1",
                                       uuid.UUID(tenant.organization_id))
    refused = [
        ("POST", "/v1/agents", {"project_id": tenant.project_id}),  # name missing
        ("POST", "/v1/agents", {"project_id": tenant.project_id, "name": "x" * 10_000}),
        ("PATCH", f"/v1/tasks/{task_id}", {"status": "no-such-status"}),
        ("PATCH", f"/v1/tasks/{task_id}", {"summary": 12}),
    ]
    for _ in range(3):
        for method, path, body in refused:
            r = await client.request(method, path, headers=tenant.token_auth, json=body)
            assert r.status_code in (400, 422), (path, r.status_code, r.text)
    # the one connection is free: a write and a read go through
    r = await client.patch(f"/v1/tasks/{task_id}", headers=tenant.token_auth, json={"status": "in_progress"})
    assert r.status_code == 200, r.text
    assert (await client.get(f"/v1/tasks/{task_id}", headers=tenant.token_auth)).json()["status"] == "in_progress"
    engine = client._transport.app.state.engine  # type: ignore[attr-defined]
    assert engine.sync_engine.pool.checkedout() == 0
    # nothing of the refused requests was written: only the status move's audit row
    after = await admin_conn.fetchval("select count(*) from token_audit_log where organization_id = $1",
                                      uuid.UUID(tenant.organization_id))
    assert after == before + 1
