"""Tasks and computer-use tasks: CRUD, assignment, the status state machines (API and
database), isolation, scopes, audit."""

import asyncio
import itertools
import uuid

import asyncpg
import pytest

from tenant_api.resources.jobs import JOB_LIFECYCLE
from tenant_api.resources.tasks import CUT_LIFECYCLE, TASK_LIFECYCLE
from tests.support.tenants import bearer, make_token, signup
from tests.support.rows import move

NOBODY = "00000000-0000-7000-8000-000000000000"


async def new_task(client, tenant, **extra):
    r = await client.post("/v1/tasks", headers=tenant.token_auth, json={"project_id": tenant.project_id, "summary": "s", **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def test_task_crud_steps_and_filters(client):
    t = await signup(client)
    agent = (await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "a"})).json()
    steps = [{"title": "first"}, {"title": "second", "done": True}, {"title": "third"}]
    task = await new_task(client, t, summary="Ship it", details="all of it", steps=steps, agent_id=agent["id"])
    assert task["status"] == "todo" and task["agent_id"] == agent["id"]
    assert task["steps"] == [{"title": "first", "done": False}, {"title": "second", "done": True},
                             {"title": "third", "done": False}]
    other = await new_task(client, t)

    r = await client.patch(f"/v1/tasks/{task['id']}", headers=t.token_auth,
                           json={"steps": [{"title": "third", "done": True}, {"title": "first"}], "details": "less"})
    assert r.status_code == 200, r.text
    assert [s["title"] for s in r.json()["steps"]] == ["third", "first"] and r.json()["details"] == "less"

    async def ids(query):
        r = await client.get(f"/v1/tasks?{query}", headers=t.token_auth)
        assert r.status_code == 200, r.text
        return {i["id"] for i in r.json()["items"]}

    assert await ids(f"agent_id={agent['id']}") == {task["id"]}
    assert await ids(f"project_id={t.project_id}") == {task["id"], other["id"]}
    await move(client, t, "/v1/tasks", other["id"], "in_progress")
    assert await ids("status=in_progress") == {other["id"]}
    assert await ids("status=todo") == {task["id"]}
    r = await client.get("/v1/tasks?status=bogus", headers=t.token_auth)
    assert r.status_code == 422

    r = await client.delete(f"/v1/tasks/{task['id']}", headers=t.token_auth)
    assert r.status_code == 204
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=t.token_auth)).status_code == 404


async def test_task_input_validation(client, tenant):
    # A new task always starts as todo: status is not an input of creation.
    r = await client.post("/v1/tasks", headers=tenant.token_auth, json={"project_id": tenant.project_id, "summary": "s", "status": "done"})
    assert r.status_code == 422 and "status" in r.text
    r = await client.post("/v1/tasks", headers=tenant.token_auth, json={"project_id": tenant.project_id, "summary": ""})
    assert r.status_code == 422 and "summary" in r.text
    r = await client.post("/v1/tasks", headers=tenant.token_auth,
                          json={"project_id": tenant.project_id, "summary": "s", "steps": [{"done": True}]})
    assert r.status_code == 422 and "title" in r.text
    r = await client.post("/v1/tasks", headers=tenant.token_auth,
                          json={"project_id": tenant.project_id, "summary": "s", "steps": [{"title": "x"}] * 201})
    assert r.status_code == 422 and "steps" in r.text


async def test_task_assignment_same_project_and_unassign_on_agent_delete(client, admin_conn):
    t = await signup(client)
    other_project = (await client.post("/v1/projects", headers=t.token_auth,
                                       json={"workspace_id": t.workspace_id, "name": "other"})).json()
    elsewhere = (await client.post("/v1/agents", headers=t.token_auth,
                                   json={"project_id": other_project["id"], "name": "far"})).json()
    here = (await client.post("/v1/agents", headers=t.token_auth, json={"project_id": t.project_id, "name": "near"})).json()

    r = await client.post("/v1/tasks", headers=t.token_auth,
                          json={"project_id": t.project_id, "summary": "s", "agent_id": elsewhere["id"]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "agent_id" and "project" in r.json()["detail"]

    task = await new_task(client, t, agent_id=here["id"])
    r = await client.patch(f"/v1/tasks/{task['id']}", headers=t.token_auth, json={"agent_id": elsewhere["id"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "agent_id"
    r = await client.patch(f"/v1/tasks/{task['id']}", headers=t.token_auth, json={"agent_id": None})
    assert r.status_code == 200 and r.json()["agent_id"] is None
    r = await client.patch(f"/v1/tasks/{task['id']}", headers=t.token_auth, json={"agent_id": here["id"]})
    assert r.json()["agent_id"] == here["id"]

    # Deleting the agent unassigns its tasks (ON DELETE SET NULL (agent_id)), keeps them.
    assert (await client.delete(f"/v1/agents/{here['id']}", headers=t.token_auth)).status_code == 204
    r = await client.get(f"/v1/tasks/{task['id']}", headers=t.token_auth)
    assert r.status_code == 200 and r.json()["agent_id"] is None and r.json()["project_id"] == t.project_id


async def walk(client, tenant, path, make, lifecycle, route):
    """Create a row and move it along ``route`` (every move must be legal)."""
    item = await make()
    for status in route:
        r = await move(client, tenant, path, item["id"], status)
        assert r.status_code == 200, (route, status, r.text)
        assert r.json()["status"] == status
    return item


async def check_machine(client, tenant, path, make, lifecycle):
    """Every legal move succeeds; every other move from a reachable state is a 409 whose
    body names both states; a refused move changes nothing."""
    routes = {lifecycle.initial: []}
    frontier = [lifecycle.initial]
    while frontier:  # shortest route to each state
        state = frontier.pop(0)
        for nxt in sorted(lifecycle.moves.get(state, ())):
            if nxt not in routes:
                routes[nxt] = routes[state] + [nxt]
                frontier.append(nxt)
    assert set(routes) == lifecycle.states
    for old, new in itertools.product(sorted(lifecycle.states), repeat=2):
        if old == new:
            continue
        item = await walk(client, tenant, path, make, lifecycle, routes[old])
        r = await move(client, tenant, path, item["id"], new)
        if new in lifecycle.moves.get(old, ()):
            assert r.status_code == 200 and r.json()["status"] == new, (old, new, r.text)
        else:
            assert r.status_code == 409, (old, new, r.text)
            body = r.json()
            assert body["detail"] == f"cannot move {lifecycle.entity} from {old} to {new}"
            assert body["from"] == old and body["to"] == new
            assert (await client.get(f"{path}/{item['id']}", headers=tenant.token_auth)).json()["status"] == old


async def test_task_state_machine(client, tenant):
    assert TASK_LIFECYCLE.moves == {"todo": {"in_progress", "cancelled"},
                                    "in_progress": {"todo", "done", "failed", "cancelled"}}
    await check_machine(client, tenant, "/v1/tasks", lambda: new_task(client, tenant), TASK_LIFECYCLE)
    # the round trip through pause, then done
    await walk(client, tenant, "/v1/tasks", lambda: new_task(client, tenant), TASK_LIFECYCLE,
               ["in_progress", "todo", "in_progress", "done"])
    # staying put is not a move
    task = await new_task(client, tenant)
    assert (await move(client, tenant, "/v1/tasks", task["id"], "todo")).status_code == 200
    r = await client.patch(f"/v1/tasks/{task['id']}", headers=tenant.token_auth, json={"status": "finished"})
    assert r.status_code == 422


async def lock_waiters(admin_conn, n: int) -> None:
    """Wait until n sessions wait for a lock."""
    for _ in range(1000):
        if await admin_conn.fetchval("select count(distinct pid) from pg_locks where not granted") >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} sessions waiting for a lock")


async def test_concurrent_moves_serialize_to_one_409(client, concurrent_client, admin_conn, tenant):
    """Two moves out of in_progress at once: the service locks the row before judging the
    move, so the second sees the first's result and gets the 409 naming both states
    (without the lock both would pass the check and the second would hit the trigger)."""
    task = await walk(client, tenant, "/v1/tasks", lambda: new_task(client, tenant), TASK_LIFECYCLE, ["in_progress"])
    async with admin_conn.transaction():  # hold the row so both requests are in flight together
        await admin_conn.execute("select 1 from task where id = $1 for update", uuid.UUID(task["id"]))
        a = asyncio.create_task(move(concurrent_client, tenant, "/v1/tasks", task["id"], "done"))
        b = asyncio.create_task(move(concurrent_client, tenant, "/v1/tasks", task["id"], "failed"))
        await lock_waiters(admin_conn, 2)
    a, b = await a, await b
    assert sorted([a.status_code, b.status_code]) == [200, 409], (a.text, b.text)
    loser, winner = (a, b) if a.status_code == 409 else (b, a)
    assert loser.json()["from"] == winner.json()["status"] and loser.json()["to"] != winner.json()["status"]


STATUS_TABLES = [("task", TASK_LIFECYCLE), ("job", JOB_LIFECYCLE), ("computer_use_task", CUT_LIFECYCLE)]


@pytest.mark.parametrize("table,lifecycle", STATUS_TABLES, ids=[t for t, _ in STATUS_TABLES])
async def test_database_enforces_the_same_machine(client, admin_conn, tenant, table, lifecycle):
    """app.guard_status refuses exactly the moves the API refuses, on any path (here a
    superuser's raw UPDATE), and refuses rows that start anywhere but the initial state."""
    bodies = {"task": ("/v1/tasks", {"summary": "s"}),
              "job": ("/v1/jobs", {"target": {"kind": "command", "ref": "true"}}),
              "computer_use_task": ("/v1/computer-use-tasks", {"instruction": "click"})}
    path, body = bodies[table]
    r = await client.post(path, headers=tenant.token_auth, json={"project_id": tenant.project_id, **body})
    assert r.status_code == 201, r.text
    row_id = uuid.UUID(r.json()["id"])
    # Runs also follow the runner protocol (app.guard_run, tested in tests/areas/test_runners.py),
    # switched off here, and hold a lease and a claim exactly while running.
    set_status = f"update {table} set status = $1 where id = $2"
    if table != "task":
        set_status = (f"update {table} set status = $1,"
                      " lease_expires_at = case when $1 = 'running' then now() + interval '1 hour' end,"
                      " claim_secret_hash = case when $1 = 'running' then sha256('x') end where id = $2")
    for old, new in itertools.product(sorted(lifecycle.states), repeat=2):
        tr = admin_conn.transaction()
        await tr.start()
        try:
            if table != "task":
                await admin_conn.execute(f"alter table {table} disable trigger guard_run")
            await admin_conn.execute("set local session_replication_role = replica")  # place the row in `old`
            await admin_conn.execute(set_status, old, row_id)
            await admin_conn.execute("set local session_replication_role = origin")
            try:
                await admin_conn.execute(set_status, new, row_id)
                accepted = True
            except asyncpg.CheckViolationError as exc:
                assert f"cannot move {lifecycle.entity} from {old} to {new}" in str(exc)
                accepted = False
            assert accepted == lifecycle.allows(old, new), (old, new)
        finally:
            await tr.rollback()
    first = sorted(lifecycle.states - {lifecycle.initial})[0]
    with pytest.raises(asyncpg.CheckViolationError, match="starts as"):
        await admin_conn.execute(
            f"insert into {table} (organization_id, project_id, status, "
            + {"task": "summary", "job": "target", "computer_use_task": "instruction"}[table]
            + ") values ($1, $2, $3, $4)",
            uuid.UUID(tenant.organization_id), uuid.UUID(tenant.project_id), first,
            '{"kind": "command", "ref": "x"}' if table == "job" else "x")


async def new_cut(client, tenant, **extra):
    r = await client.post("/v1/computer-use-tasks", headers=tenant.token_auth,
                          json={"project_id": tenant.project_id, "instruction": "open the browser", **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def test_computer_use_task_lifecycle_and_result(client, tenant):
    config = await client.post("/v1/desktop-configs", headers=tenant.token_auth, json={
        "project_id": tenant.project_id, "name": f"c-{uuid.uuid4().hex[:6]}", "image": "ubuntu"})
    assert config.status_code == 201, config.text
    vm_row = await client.post("/v1/desktop-vms", headers=tenant.token_auth, json={"config_id": config.json()["id"], "name": "vm"})
    assert vm_row.status_code == 201, vm_row.text
    vm = vm_row.json()["id"]
    # a VM that is not visible here is refused, naming the field
    r = await client.post("/v1/computer-use-tasks", headers=tenant.token_auth,
                          json={"project_id": tenant.project_id, "instruction": "x", "desktop_vm_id": str(uuid.uuid4())})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "desktop_vm_id", r.text
    cut = await new_cut(client, tenant, desktop_vm_id=vm)
    assert cut["status"] == "queued" and cut["desktop_vm_id"] == vm
    assert cut["started_at"] is None and cut["finished_at"] is None and cut["result"] is None

    # A PATCH only cancels: running and finishing belong to the runner (tests/areas/test_runners.py).
    for body in ({"status": "running"}, {"status": "succeeded"}, {"result": {"x": 1}}):
        r = await client.patch(f"/v1/computer-use-tasks/{cut['id']}", headers=tenant.token_auth, json=body)
        assert r.status_code == 422, (body, r.text)
    r = await client.post("/v1/computer-use-tasks/claim", headers=tenant.token_auth, json={"desktop_vm_ids": [vm]})
    assert r.status_code == 200, r.text
    claim = r.json()
    running = claim["computer_use_task"]
    assert running["id"] == cut["id"] and running["started_at"] is not None and running["finished_at"] is None
    url = f"/v1/computer-use-tasks/{cut['id']}/finish"
    big = {"blob": "x" * 70000}
    r = await client.post(url, headers=tenant.token_auth, json={"claim_secret": claim["claim_secret"], "exit_code": 0, "result": big})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "result"
    r = await client.post(url, headers=tenant.token_auth, json={"claim_secret": claim["claim_secret"], "exit_code": 0,
                                                 "result": {"screenshots": 3, "summary": "done"}})
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "succeeded" and done["exit_code"] == 0
    assert done["finished_at"] >= done["started_at"] and done["result"] == {"screenshots": 3, "summary": "done"}

    r = await client.get(f"/v1/computer-use-tasks?desktop_vm_id={vm}", headers=tenant.token_auth)
    assert [i["id"] for i in r.json()["items"]] == [cut["id"]]
    r = await client.get("/v1/computer-use-tasks?status=succeeded&limit=200", headers=tenant.token_auth)
    items = r.json()["items"]
    assert cut["id"] in {i["id"] for i in items} and {i["status"] for i in items} == {"succeeded"}

    # cancelling: from queued; a finished task stays as it is
    other = await new_cut(client, tenant)
    r = await move(client, tenant, "/v1/computer-use-tasks", other["id"], "cancelled")
    assert r.status_code == 200 and r.json()["finished_at"] is not None and r.json()["started_at"] is None
    r = await move(client, tenant, "/v1/computer-use-tasks", cut["id"], "cancelled")
    assert r.status_code == 409 and r.json()["detail"] == "cannot move computer_use_task from succeeded to cancelled"


async def test_other_organization_is_404_everywhere(client, tenant, stranger):
    a, b = tenant, stranger
    task = await new_task(client, a)
    cut = await new_cut(client, a)
    for path, item in (("/v1/tasks", task), ("/v1/computer-use-tasks", cut)):
        url = f"{path}/{item['id']}"
        assert (await client.get(url, headers=b.token_auth)).status_code == 404
        r = await client.patch(url, headers=b.token_auth, json={"status": "cancelled"})
        assert r.status_code == 404, r.text
        assert (await client.delete(url, headers=b.token_auth)).status_code == 404
        assert item["id"] not in {i["id"] for i in (await client.get(path, headers=b.token_auth)).json()["items"]}
        # still there, untouched
        assert (await client.get(url, headers=a.token_auth)).json()["status"] in ("todo", "queued")
    # body references into another organization: 422 naming the field
    r = await client.post("/v1/tasks", headers=b.token_auth, json={"project_id": a.project_id, "summary": "s"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_id"
    agent = (await client.post("/v1/agents", headers=a.token_auth, json={"project_id": a.project_id, "name": "x"})).json()
    r = await client.post("/v1/tasks", headers=b.token_auth,
                          json={"project_id": b.project_id, "summary": "s", "agent_id": agent["id"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "agent_id"
    r = await client.post("/v1/computer-use-tasks", headers=b.token_auth,
                          json={"project_id": a.project_id, "instruction": "x"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_id"
    assert (await client.get(f"/v1/tasks/{NOBODY}", headers=a.token_auth)).status_code == 404


async def test_scopes(client, tenant):
    task = await new_task(client, tenant)
    none = bearer((await make_token(client, tenant, ["agents:write"]))["token"])
    read = bearer((await make_token(client, tenant, ["tasks:read"]))["token"])
    for path in ("/v1/tasks", "/v1/computer-use-tasks"):
        r = await client.get(path, headers=none)
        assert r.status_code == 403 and r.json()["missing_scope"] == "tasks:read" and "tasks:read" in r.json()["detail"]
        assert (await client.get(path, headers=read)).status_code == 200
        r = await client.post(path, headers=read, json={"project_id": tenant.project_id, "summary": "s"})
        assert r.status_code == 403 and r.json()["missing_scope"] == "tasks:write"
    r = await client.patch(f"/v1/tasks/{task['id']}", headers=read, json={"status": "in_progress"})
    assert r.status_code == 403 and r.json()["missing_scope"] == "tasks:write"
    r = await client.delete(f"/v1/tasks/{task['id']}", headers=read)
    assert r.status_code == 403 and r.json()["missing_scope"] == "tasks:write"


async def test_project_restricted_token_sees_only_its_project(client, tenant):
    other = (await client.post("/v1/projects", headers=tenant.token_auth,
                               json={"workspace_id": tenant.workspace_id, "name": "restricted-p2"})).json()
    hidden = (await client.post("/v1/tasks", headers=tenant.token_auth, json={"project_id": other["id"], "summary": "h"})).json()
    seen = await new_task(client, tenant)
    h = bearer((await make_token(client, tenant, ["tasks:write"], project_ids=[tenant.project_id]))["token"])
    assert (await client.get(f"/v1/tasks/{hidden['id']}", headers=h)).status_code == 404
    assert (await client.get(f"/v1/tasks/{seen['id']}", headers=h)).status_code == 200
    r = await client.post("/v1/tasks", headers=h, json={"project_id": other["id"], "summary": "s"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "project_id"


async def test_audit_rows(client, admin_conn, tenant):
    task = await new_task(client, tenant, summary="audited")
    await move(client, tenant, "/v1/tasks", task["id"], "in_progress")
    rows = await admin_conn.fetch(
        "select action, token_id::text, organization_id::text, changes from token_audit_log"
        " where table_name = 'task' and row_id = $1 order by id", uuid.UUID(task["id"]))
    assert [(r["action"], r["token_id"], r["organization_id"]) for r in rows] == [
        ("INSERT", tenant.token_id, tenant.organization_id), ("UPDATE", tenant.token_id, tenant.organization_id)]
    import json

    assert json.loads(rows[1]["changes"])["status"] == {"old": "todo", "new": "in_progress"}
