"""Webhooks (docs/webhooks.md) against a real HTTP receiver (http.server in a thread): signed
events for each state change, in order per object, retried after a 500; nothing for a
rolled-back change, nothing of another organization, nothing the owning credential may
not read (and a paused webhook when that credential is revoked or demoted); outbound
safety; rotation; the delivery log and redelivery; management and its scopes."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tenant_api.app import create_app
from tenant_api.db.engine import create_api_engine
from tenant_api.webhooks import events, signing
from tenant_api.webhooks.delivery import Deliverer
from tests.support.tenants import bearer, make_token, signup
from tests.support.security import as_request

U = uuid.UUID
CMD = {"kind": "command", "ref": "true"}


# --- the receiver ----------------------------------------------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses to answer, in turn
    slow: dict[str, float] = field(default_factory=dict)
    huge: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str, ok_only: bool = True) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path and (r.status == 200 or not ok_only)]


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with receiver.lock:
                script = receiver.scripts.get(self.path)
                status = script.pop(0) if script else 200
                receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                  body, status))
            if self.path in receiver.slow:
                time.sleep(receiver.slow[self.path])
            payload = b"x" * (1024 * 1024) if self.path in receiver.huge else b'{"ok": true}'
            self.send_response(status)
            if status in (301, 302, 307):
                self.send_header("Location", "/landing")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except OSError:  # the worker stops reading a huge answer
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture(scope="module")
def receiver():
    recv, server = start_receiver()
    yield recv
    server.shutdown()


def fast(settings):
    return dataclasses.replace(settings.webhooks, backoff_seconds=0.2, poll_seconds=0.05, timeout_seconds=2.0,
                               lease_seconds=10.0)


def signing_key(settings) -> bytes:
    return signing.server_key(settings.webhooks.signing_key, settings.auth.jwt_secret)


class WorkerThread:
    """A delivery worker, as the scheduler process runs it, in a thread with its own event
    loop: the test's loop is blocked while the test client handles a request, and a worker
    holding a row lock in that loop would then hold it until the request times out."""

    def __init__(self, settings, webhook_settings=None) -> None:
        self.settings = settings
        self.webhook_settings = webhook_settings or fast(settings)
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.delivered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self.stop = asyncio.Event()
        engine = create_api_engine(self.settings.database.worker_database())
        deliverer = Deliverer(engine, self.webhook_settings, signing_key(self.settings))
        self.started.set()
        try:
            await deliverer.run(self.stop)
        finally:
            self.delivered = deliverer.delivered
            await deliverer.aclose()
            await engine.dispose()

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(20)


@pytest.fixture
def worker(settings):
    with WorkerThread(settings) as w:
        yield w


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)


async def new_webhook(client, headers, url: str, types=("*",), **extra) -> dict:
    r = await client.post("/v1/webhooks", headers=headers, json={"url": url, "event_types": list(types), **extra})
    assert r.status_code == 201, r.text
    return r.json()


def path() -> str:
    return f"/hook/{uuid.uuid4().hex[:10]}"


# --- signed, ordered, retried ----------------------------------------------------------------

async def test_signed_events_in_order_per_object_retried_after_a_500(client, receiver, worker, admin_conn):
    t = await signup(client)
    runner = bearer((await make_token(client, t, ["tasks:write"]))["token"])
    p = path()
    receiver.scripts[p] = [500]  # the first attempt fails
    hook = await new_webhook(client, t.token_auth, receiver.url(p), ["job.*"])
    secret = hook["secret"]
    assert secret.startswith("whsec_") and hook["status"] == "active" and hook["owner_token_id"] == t.token_id
    r = await client.get(f"/v1/webhooks/{hook['id']}", headers=t.token_auth)
    assert r.status_code == 200 and "secret" not in r.json()
    # The secret is nowhere in the database (derived from a nonce and the server key).
    raw = signing.decode_secret(secret)
    row = await admin_conn.fetchrow("select * from webhook where id = $1", U(hook["id"]))
    assert not any(isinstance(v, bytes) and raw in v for v in row.values())
    assert secret not in json.dumps([str(v) for v in row.values()])

    job = (await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "target": CMD})).json()
    claim = (await client.post("/v1/jobs/claim", headers=runner, json={})).json()
    r = await client.post(f"/v1/jobs/{job['id']}/finish", headers=runner,
                          json={"claim_secret": claim["claim_secret"], "exit_code": 0})
    assert r.status_code == 200
    await eventually(lambda: len(receiver.at(p)) == 3, what="three deliveries")
    got = receiver.at(p, ok_only=False)
    assert [(g.status, g.event["type"]) for g in got] == [
        (500, "job.queued"), (200, "job.queued"), (200, "job.running"), (200, "job.succeeded")]
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]  # a retry is the same message
    for g in got:
        assert signing.verify(secret, g.headers, g.body), g.headers
        assert not signing.verify(secret, g.headers, g.body + b" "), "a changed body must not verify"
        stamp = int(g.headers["webhook-timestamp"])
        assert not signing.verify(secret, g.headers, g.body, now=stamp + 600), "a replay must be refusable"
        event = g.event
        assert event["organization_id"] == t.organization_id and event["object_id"] == job["id"]
        assert event["id"] == g.headers["webhook-id"] and event["data"]["id"] == job["id"]
        assert "claim_secret_hash" not in event["data"]
    running, done = got[2].event, got[3].event
    assert running["previous"] == {"status": "queued"} and running["data"]["attempt"] == 1
    assert done["data"]["exit_code"] == 0 and done["actor_token_id"] == claim["job"]["claimed_by_token_id"]

    async def settled():  # the worker records an outcome just after the receiver has answered
        items = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=t.token_auth)).json()["items"]
        return all(d["status"] != "pending" for d in items) and items

    deliveries = await eventually(settled, what="the outcomes recorded")
    assert [(d["event_type"], d["status"]) for d in deliveries] == [
        ("job.succeeded", "delivered"), ("job.running", "delivered"), ("job.queued", "delivered")]
    first = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries/{deliveries[-1]['id']}", headers=t.token_auth)).json()
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in first["attempt_log"]] == [
        (1, "retry", 500), (2, "delivered", 200)]
    assert first["attempt_log"][0]["error"] == "HTTP 500" and all(a["duration_ms"] >= 0 for a in first["attempt_log"])
    assert first["attempts"] == 2 and first["last_status_code"] == 200


async def test_two_workers_never_send_a_delivery_twice(client, receiver, settings):
    """Workers (one per scheduler process) divide the deliveries between them: a delivery
    being sent is leased and locked (SKIP LOCKED), so no event reaches a receiver twice."""
    t = await signup(client)
    p = path()
    receiver.slow[p] = 0.2
    await new_webhook(client, t.token_auth, receiver.url(p), ["task.*"])
    for i in range(12):
        await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": f"t{i}"})
    workers = [WorkerThread(settings, dataclasses.replace(fast(settings), concurrency=2)) for _ in range(2)]
    for w in workers:
        w.__enter__()
    try:
        await eventually(lambda: len(receiver.at(p)) >= 12, what="twelve deliveries")
        await asyncio.sleep(0.5)
    finally:
        for w in workers:
            w.__exit__()
    ids = [g.headers["webhook-id"] for g in receiver.at(p, ok_only=False)]
    assert len(ids) == len(set(ids)) == 12
    assert all(w.delivered > 0 for w in workers)  # both took part


async def test_a_conversation_s_messages_invites_and_tokens(client, receiver, worker):
    t = await signup(client)
    p = path()
    await new_webhook(client, t.token_auth, receiver.url(p), ["conversation_message.created", "invite.*", "token.*"])
    conv = (await client.post("/v1/conversations", headers=t.token_auth,
                              json={"project_id": t.project_id, "kind": "CHANNEL", "name": "hooks"})).json()
    for text in ("one", "two", "three"):
        assert (await client.post(f"/v1/conversations/{conv['id']}/messages", headers=t.token_auth,
                                  json={"body": text})).status_code == 201
    invitee = await signup(client)
    invite = (await client.post(f"/v1/projects/{t.project_id}/invites", headers=t.token_auth,
                                json={"email": invitee.email, "role": "viewer"})).json()
    assert (await client.post("/v1/invites/accept", headers=invitee.session_auth,
                              json={"invite_token": invite["invite_token"]})).status_code == 201
    token = await make_token(client, t, ["agents:read"])
    assert (await client.delete(f"/v1/tokens/{token['id']}", headers=t.token_auth)).status_code == 204
    await client.post("/v1/auth/login", json={"email": t.email, "password": t.password})  # a session: no event
    got = await eventually(lambda: receiver.at(p) if len(receiver.at(p)) >= 6 else None, what="six events")
    await asyncio.sleep(0.5)
    types = [g.event["type"] for g in receiver.at(p)]
    assert types.count("conversation_message.created") == 3 and "invite.accepted" in types
    assert types.count("token.created") == 1 and types.count("token.revoked") == 1 and len(types) == 6
    bodies = [g.event["data"]["body"] for g in got if g.event["type"] == "conversation_message.created"]
    assert bodies == ["one", "two", "three"]  # a conversation's messages in order
    token_event = next(g.event for g in got if g.event["type"] == "token.created")
    assert token_event["data"]["id"] == token["id"] and "token_hash" not in token_event["data"]
    assert token["token"] not in json.dumps([g.event for g in got])
    accepted = next(g.event for g in got if g.event["type"] == "invite.accepted")
    assert accepted["data"]["accepted_by_user_id"] == invitee.user_id and accepted["project_id"] == t.project_id


# --- what never goes out ---------------------------------------------------------------------

async def test_a_rolled_back_change_never_fires(client, receiver, worker, api_conn, admin_conn):
    t = await signup(client)
    p = path()
    await new_webhook(client, t.token_auth, receiver.url(p), ["task.*"])
    # Over raw SQL as the API role: the event exists inside the transaction, then rolls back with it.
    async with as_request(api_conn, t.token):
        task_id = await api_conn.fetchval("insert into task (organization_id, project_id, summary)"
                                          " values ($1, $2, 'rolled back') returning id",
                                          U(t.organization_id), U(t.project_id))
        assert await api_conn.fetchval("select count(*) from webhook_event where object_id = $1", task_id) == 1
    # Over HTTP: the task's INSERT ran, then the request's transaction failed (its commit).
    from tenant_api.idempotency import PendingRequest

    original = PendingRequest.store

    async def broken(self, *args, **kwargs):
        raise RuntimeError("the commit fails")

    PendingRequest.store = broken  # type: ignore[method-assign]
    try:
        r = await client.post("/v1/tasks", headers={**t.token_auth, "Idempotency-Key": uuid.uuid4().hex},
                              json={"project_id": t.project_id, "summary": "failed request"})
    finally:
        PendingRequest.store = original  # type: ignore[method-assign]
    assert r.status_code == 503
    committed = (await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id,
                                                                  "summary": "committed"})).json()
    await eventually(lambda: receiver.at(p), what="the committed task's event")
    await asyncio.sleep(0.5)
    assert [g.event["data"]["summary"] for g in receiver.at(p, ok_only=False)] == ["committed"]
    assert receiver.at(p)[0].event["object_id"] == committed["id"]
    assert await admin_conn.fetchval("select count(*) from webhook_event where organization_id = $1",
                                     U(t.organization_id)) == 1


async def test_nothing_of_another_organization(client, receiver, worker):
    a, b = await signup(client), await signup(client)
    pa, pb = path(), path()
    await new_webhook(client, a.token_auth, receiver.url(pa))
    await new_webhook(client, b.token_auth, receiver.url(pb))
    b_ids = set()
    for _ in range(3):
        b_ids.add((await client.post("/v1/tasks", headers=b.token_auth, json={"project_id": b.project_id,
                                                                    "summary": "b's"})).json()["id"])
    b_ids.add((await make_token(client, b, ["agents:read"]))["id"])
    a_task = (await client.post("/v1/tasks", headers=a.token_auth, json={"project_id": a.project_id, "summary": "a's"})).json()
    await eventually(lambda: len(receiver.at(pb)) >= 4 and receiver.at(pa), what="both organizations' events")
    await asyncio.sleep(0.5)
    assert [g.event["object_id"] for g in receiver.at(pa)] == [a_task["id"]]
    assert {g.event["organization_id"] for g in receiver.at(pb)} == {b.organization_id}
    assert {g.event["object_id"] for g in receiver.at(pb)} == b_ids
    assert not any(b.organization_id in g.body.decode() for g in receiver.at(pa))


async def test_a_delivery_carries_only_what_the_owner_may_read(client, receiver, worker):
    t = await signup(client)
    p_narrow, p_projects = path(), path()
    narrow = await make_token(client, t, ["org:write"])  # manages webhooks, reads no tasks
    hook = await new_webhook(client, bearer(narrow["token"]), receiver.url(p_narrow))
    other_project = (await client.post("/v1/projects", headers=t.token_auth,
                                       json={"workspace_id": t.workspace_id, "name": "hooks-other"})).json()["id"]
    filtered = await new_webhook(client, t.token_auth, receiver.url(p_projects), project_ids=[other_project])
    await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": "default project"})
    mine = (await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": other_project,
                                                             "summary": "other project"})).json()

    async def skipped():
        items = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=t.token_auth)).json()["items"]
        return len(items) == 2 and all(d["status"] == "skipped" for d in items) and items

    items = await eventually(skipped, what="skipped deliveries")
    detail = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries/{items[0]['id']}", headers=t.token_auth)).json()
    assert detail["attempt_log"][0]["outcome"] == "skipped" and "not visible" in detail["attempt_log"][0]["error"]
    await eventually(lambda: receiver.at(p_projects), what="the project's event")
    await asyncio.sleep(0.3)
    assert receiver.at(p_narrow, ok_only=False) == []
    assert [g.event["object_id"] for g in receiver.at(p_projects)] == [mine["id"]]  # only its project's
    assert [d["event_type"] for d in (await client.get(f"/v1/webhooks/{filtered['id']}/deliveries",
                                                       headers=t.token_auth)).json()["items"]] == ["task.todo"]


async def test_a_revoked_or_demoted_owner_pauses_the_webhook(client, receiver, worker, admin_conn):
    t = await signup(client)
    admin_user = await signup(client)
    await admin_conn.execute("insert into organization_membership (organization_id, user_id, role)"
                             " values ($1, $2, 'admin')", U(t.organization_id), U(admin_user.user_id))
    login = await client.post("/v1/auth/login", json={"email": admin_user.email, "password": admin_user.password,
                                                      "organization_id": t.organization_id})
    admin_session = bearer(login.json()["access_token"])
    admins_token = (await client.post("/v1/tokens", headers=admin_session,
                                      json={"name": "hooks", "scopes": ["org:write", "tasks:read"]})).json()
    p = path()
    hook = await new_webhook(client, bearer(admins_token["token"]), receiver.url(p), ["task.*"])

    async def task(summary: str) -> dict:
        return (await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id,
                                                                 "summary": summary})).json()

    await task("while admin")
    await eventually(lambda: receiver.at(p), what="the first event")
    # Demoted to member (no org:write): the next delivery pauses the webhook, sends nothing.
    r = await client.patch(f"/v1/organization/members/{admin_user.user_id}", headers=t.token_auth, json={"role": "member"})
    assert r.status_code == 200, r.text
    held = await task("while demoted")

    async def paused():
        row = (await client.get(f"/v1/webhooks/{hook['id']}", headers=t.token_auth)).json()
        return row["status"] == "paused" and row

    row = await eventually(paused, what="the webhook paused")
    assert "org:write" in row["paused_reason"]
    await asyncio.sleep(0.5)
    assert [g.event["data"]["summary"] for g in receiver.at(p)] == ["while admin"]
    async def held_back():  # pending, and not counted as an attempt
        items = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=t.token_auth,
                                  params={"status": "pending"})).json()["items"]
        return len(items) == 1 and items[0]["attempts"] == 0

    await eventually(held_back, what="the delivery held back")
    # The owner resumes it, as its new owner: the held event goes out, with the owner's view.
    r = await client.patch(f"/v1/webhooks/{hook['id']}", headers=t.token_auth, json={"enabled": True})
    assert r.status_code == 200 and r.json()["status"] == "active" and r.json()["owner_token_id"] == t.token_id
    await eventually(lambda: len(receiver.at(p)) == 2, what="the held event")
    assert receiver.at(p)[1].event["object_id"] == held["id"]
    # A revoked owning credential pauses it too.
    own = await make_token(client, t, ["org:write", "tasks:read"])
    r = await client.patch(f"/v1/webhooks/{hook['id']}", headers=bearer(own["token"]), json={"enabled": True})
    assert r.json()["owner_token_id"] == own["id"]
    assert (await client.delete(f"/v1/tokens/{own['id']}", headers=t.token_auth)).status_code == 204
    await task("after revocation")
    row = await eventually(paused, what="paused again")
    assert "revoked" in row["paused_reason"]
    await asyncio.sleep(0.3)
    assert len(receiver.at(p)) == 2
    audit = await admin_conn.fetch("select request_id, changes from token_audit_log where table_name = 'webhook'"
                                   " and row_id = $1 and action = 'UPDATE' order by id", U(hook["id"]))
    assert any(a["request_id"] == "webhook-worker" and "paused_reason" in a["changes"] for a in audit)


# --- outbound safety -------------------------------------------------------------------------

async def test_private_targets_are_refused_without_the_setting(client, settings, receiver, admin_conn):
    strict = settings.with_webhooks(allow_private_targets=False)
    t, elsewhere = await signup(client), await signup(client)
    async with AsyncTestClient(create_app(strict)) as c:
        for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://api.localhost/x", "http://[::1]/x",
                    "http://169.254.169.254/latest/meta-data", "http://10.0.0.7/x", "ftp://example.com/x",
                    "http://user:pw@example.com/x", "http://example.com/x#frag", "http://example.com:99999/x"):
            r = await c.post("/v1/webhooks", headers=elsewhere.token_auth, json={"url": url, "event_types": ["*"]})
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == "url", (url, r.text)
        r = await c.post("/v1/webhooks", headers=elsewhere.token_auth,
                         json={"url": "https://hooks.example.com/in/abc", "event_types": ["*"]})
        assert r.status_code == 201  # names are checked when delivering: DNS may change
    # At delivery: a name that resolves to loopback is not reached, and the log says why.
    p = path()
    hook = await new_webhook(client, t.token_auth, f"http://localhost:{receiver.port}{p}", ["task.*"])
    await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": "ssrf"})
    engine = create_api_engine(settings.database.worker_database())
    deliverer = Deliverer(engine, strict.webhooks, signing_key(settings))
    try:
        assert await deliverer.run_once(organization_id=U(t.organization_id)) == 1
    finally:
        await deliverer.aclose()
        await engine.dispose()
    assert receiver.at(p, ok_only=False) == []
    delivery = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=t.token_auth)).json()["items"][0]
    assert delivery["status"] == "pending" and "non-public address" in delivery["last_error"]


async def test_redirects_time_and_size_are_bounded(client, receiver, worker):
    t = await signup(client)
    redirecting, slow, huge = path(), path(), path()
    receiver.scripts[redirecting] = [302] * 20
    receiver.slow[slow] = 3.0
    receiver.huge.add(huge)
    hooks = {p: await new_webhook(client, t.token_auth, receiver.url(p), ["task.*"]) for p in (redirecting, slow, huge)}
    await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": "bounded"})

    async def attempt(p: str) -> dict:
        items = (await client.get(f"/v1/webhooks/{hooks[p]['id']}/deliveries", headers=t.token_auth)).json()["items"]
        if items and items[0]["attempts"] >= 1 and items[0]["last_attempt_at"] and (
                items[0]["last_error"] or items[0]["status"] == "delivered"):
            detail = (await client.get(f"/v1/webhooks/{hooks[p]['id']}/deliveries/{items[0]['id']}",
                                       headers=t.token_auth)).json()
            return detail["attempt_log"] and detail
        return {}

    redirected = await eventually(lambda: attempt(redirecting), what="the redirect attempt")
    log = redirected["attempt_log"][0]
    assert log["status_code"] == 302 and "redirects are not followed" in log["error"]
    assert receiver.at("/landing", ok_only=False) == []
    timed_out = await eventually(lambda: attempt(slow), what="the slow attempt")
    log = timed_out["attempt_log"][0]
    assert log["status_code"] is None and "timed out after 2 s" in log["error"] and log["duration_ms"] < 3000
    big = await eventually(lambda: attempt(huge), what="the huge answer")
    assert big["status"] == "delivered" and len(big["attempt_log"][0]["response_excerpt"]) <= 1024


# --- secrets, redelivery, management -------------------------------------------------------

async def test_rotation_signs_with_both_secrets_for_a_while(client, receiver, worker):
    t = await signup(client)
    p = path()
    hook = await new_webhook(client, t.token_auth, receiver.url(p), ["task.*"])
    first = hook["secret"]
    r = await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=t.token_auth, json={"grace_seconds": 3600})
    assert r.status_code == 200 and r.json()["secret"] != first and r.json()["previous_secret_expires_at"]
    second = r.json()["secret"]
    await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": "during grace"})
    got = await eventually(lambda: receiver.at(p), what="an event")
    assert len(got[0].headers["webhook-signature"].split()) == 2
    assert signing.verify(first, got[0].headers, got[0].body) and signing.verify(second, got[0].headers, got[0].body)
    r = await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=t.token_auth, json={"grace_seconds": 0})
    third = r.json()["secret"]
    assert r.json()["previous_secret_expires_at"] is None
    await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": "after"})
    got = await eventually(lambda: receiver.at(p)[1:], what="the second event")
    assert len(got[0].headers["webhook-signature"].split()) == 1
    assert signing.verify(third, got[0].headers, got[0].body)
    assert not signing.verify(second, got[0].headers, got[0].body) and not signing.verify(first, got[0].headers,
                                                                                           got[0].body)


async def test_redelivery(client, receiver, worker):
    t = await signup(client)
    p = path()
    hook = await new_webhook(client, t.token_auth, receiver.url(p), ["task.*"])
    await client.post("/v1/tasks", headers=t.token_auth, json={"project_id": t.project_id, "summary": "again"})

    async def delivered():
        items = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=t.token_auth)).json()["items"]
        return items and items[0]["status"] == "delivered" and items[0]

    delivery = await eventually(delivered, what="the delivery settled")
    url = f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver"
    r = await client.post(url, headers=t.token_auth)
    assert r.status_code == 202 and r.json()["status"] == "pending" and r.json()["redelivered_at"]
    second = await client.post(url, headers=t.token_auth)
    assert second.status_code in (202, 409)  # 409 while still pending
    if second.status_code == 409:
        assert second.json()["delivery_status"] == "pending"
    await eventually(lambda: len(receiver.at(p)) >= 2, what="the redelivery")
    assert receiver.at(p)[0].headers["webhook-id"] == receiver.at(p)[1].headers["webhook-id"]
    detail = (await client.get(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}", headers=t.token_auth)).json()
    assert detail["status"] == "delivered" and len(detail["attempt_log"]) >= 2


async def test_management_scopes_and_validation(client, receiver, admin_conn):
    t, other = await signup(client), await signup(client)
    hook = await new_webhook(client, t.token_auth, receiver.url(path()), ["job.*", "task.done"], description="ops")
    member = bearer((await make_token(client, t, ["org:read", "tasks:write"]))["token"])
    restricted = bearer((await make_token(client, t, ["org:write"], project_ids=[t.project_id]))["token"])
    for method, url in (("GET", "/v1/webhooks"), ("GET", f"/v1/webhooks/{hook['id']}"), ("POST", "/v1/webhooks"),
                        ("GET", f"/v1/webhooks/{hook['id']}/deliveries")):
        r = await client.request(method, url, headers=member, json={"url": receiver.url("/x"), "event_types": ["*"]}
                                 if method == "POST" else None)
        assert r.status_code == 403 and r.json()["missing_scope"] == "org:write", (method, url, r.text)
        r = await client.request(method, url, headers=restricted,
                                 json={"url": receiver.url("/x"), "event_types": ["*"]} if method == "POST" else None)
        assert r.status_code == 403 and "restricted to projects" in r.json()["detail"], (method, url, r.text)
    for body, field_name in (({"url": receiver.url("/x"), "event_types": ["job.exploded"]}, "event_types"),
                             ({"url": receiver.url("/x"), "event_types": []}, "event_types"),
                             ({"url": receiver.url("/x"), "event_types": ["*"], "project_ids": [other.project_id]},
                              "project_ids"),
                             ({"url": "not a url", "event_types": ["*"]}, "url")):
        r = await client.post("/v1/webhooks", headers=t.token_auth, json=body)
        assert r.status_code == 422 and field_name in r.text, (body, r.text)
    for method in ("GET", "PATCH", "DELETE"):
        r = await client.request(method, f"/v1/webhooks/{hook['id']}", headers=other.token_auth,
                                 json={"description": "x"} if method == "PATCH" else None)
        assert r.status_code == 404
    r = await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=other.token_auth, json={})
    assert r.status_code == 404
    assert hook["id"] not in {h["id"] for h in (await client.get("/v1/webhooks", headers=other.token_auth)).json()["items"]}
    # A disabled webhook gets nothing recorded; a deleted one takes its deliveries with it.
    r = await client.patch(f"/v1/webhooks/{hook['id']}", headers=t.token_auth, json={"enabled": False})
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "target": CMD})
    assert await admin_conn.fetchval("select count(*) from webhook_delivery where webhook_id = $1", U(hook["id"])) == 0
    await client.patch(f"/v1/webhooks/{hook['id']}", headers=t.token_auth, json={"enabled": True})
    await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "target": CMD})
    assert await admin_conn.fetchval("select count(*) from webhook_delivery where webhook_id = $1", U(hook["id"])) == 1
    assert (await client.delete(f"/v1/webhooks/{hook['id']}", headers=t.token_auth)).status_code == 204
    assert await admin_conn.fetchval("select count(*) from webhook_delivery where webhook_id = $1", U(hook["id"])) == 0
    # The audit trail shows where events go (the origin), never the whole URL.
    rows = await admin_conn.fetch("select changes::text as c from token_audit_log where table_name = 'webhook'"
                                  " and row_id = $1 order by txid, id", U(hook["id"]))
    assert rows and all("/hook/" not in r["c"] for r in rows)
    assert f"127.0.0.1:{receiver.port}" in rows[0]["c"]


async def test_a_credential_cannot_hand_a_webhook_to_another_token(client, receiver, api_conn):
    t = await signup(client)
    hook = await new_webhook(client, t.token_auth, receiver.url(path()))
    wider = await make_token(client, t, ["org:write", "audit:read"])
    narrow = await make_token(client, t, ["org:write"])
    async with as_request(api_conn, narrow["token"]):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute("update webhook set owner_token_id = $1 where id = $2", U(wider["id"]),
                                   U(hook["id"]))
    async with as_request(api_conn, narrow["token"]):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute(
                "insert into webhook (organization_id, url, url_origin, event_types, owner_token_id, secret_nonce)"
                " values ($1, 'http://x.example/', 'http://x.example', '{*}', $2, sha256('n'))",
                U(t.organization_id), U(wider["id"]))
    async with as_request(api_conn, narrow["token"]):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.fetch("select secret_nonce from webhook")


async def test_the_catalog_matches_the_outbox_triggers(admin_conn):
    rows = await admin_conn.fetch(
        "select c.relname, encode(t.tgargs, 'escape') as args from pg_trigger t join pg_class c on c.oid = t.tgrelid"
        " where t.tgname = 'webhook_outbox' and not t.tgisinternal")
    found = {}
    for r in rows:
        entity, area, mode = r["args"].split("\\000")[:3]
        found[entity] = (area, mode)
    assert found == events.SOURCES
    assert {"job.queued", "job.running", "job.succeeded", "robot_macro_execution.queued", "task.in_progress",
            "conversation_message.created", "invite.accepted", "token.revoked"} <= events.EVENT_TYPES


# --- retention and metrics ---------------------------------------------------------------------

async def test_retention_purges_settled_deliveries_their_attempts_and_orphaned_events(
        client, receiver, worker, admin_conn, api_conn, settings):
    """The scheduler's retention round (as the API role, no context): a delivery settled
    longer ago than RETENTION_WEBHOOK_DELIVERIES_DAYS goes with its attempts, and so does
    an old event no delivery refers to any more; a pending delivery (and its event), and
    anything settled less than a day ago whatever the cutoff, stay. The worker counts what
    it settled in the metrics."""
    from prometheus_client import REGISTRY
    from sqlalchemy.ext.asyncio import create_async_engine

    from tenant_api.ops.retention import purge_round
    from tenant_api.settings import RetentionSettings

    def delivered_count() -> float:
        return REGISTRY.get_sample_value("tenant_api_webhook_deliveries_total", {"outcome": "delivered"}) or 0.0

    counted_before = delivered_count()
    t = await signup(client)
    org = U(t.organization_id)
    jobs_hook = await new_webhook(client, t.token_auth, receiver.url(path()), ["job.*"])
    tokens_hook = await new_webhook(client, t.token_auth, receiver.url(path()), ["token.*"])
    jobs = [U((await client.post("/v1/jobs", headers=t.token_auth, json={"project_id": t.project_id, "target": CMD})).json()["id"])
            for _ in range(3)]
    await make_token(client, t, ["org:read"])  # token.created: for tokens_hook only

    async def all_delivered():
        rows = await admin_conn.fetch(
            "select d.id, d.status, d.event_id, e.object_id, d.webhook_id from webhook_delivery d"
            " join webhook_event e on e.organization_id = d.organization_id and e.id = d.event_id"
            " where d.organization_id = $1", org)
        return len(rows) == 4 and all(r["status"] == "delivered" for r in rows) and rows

    rows = await eventually(all_delivered, what="four deliveries settled")
    assert delivered_count() - counted_before >= 4
    by_object = {r["object_id"]: r for r in rows}
    old, young, waiting = (by_object[j] for j in jobs)
    token_event = next(r["event_id"] for r in rows if r["webhook_id"] == U(tokens_hook["id"]))
    assert await admin_conn.fetchval("select count(*) from webhook_attempt where delivery_id = $1", old["id"]) == 1

    async with admin_conn.transaction():
        # (replica: the touch_updated_at trigger would set updated_at back to now)
        await admin_conn.execute("set local session_replication_role = replica")
        await admin_conn.execute("update webhook_event set occurred_at = now() - interval '40 days'"
                                 " where organization_id = $1", org)
        await admin_conn.execute("update webhook_delivery set updated_at = now() - interval '40 days' where id = $1",
                                 old["id"])
        await admin_conn.execute("update webhook_delivery set status = 'failed', updated_at = now() - interval"
                                 " '20 hours' where id = $1", young["id"])
        await admin_conn.execute("update webhook_delivery set status = 'pending', next_attempt_at = now() + interval"
                                 " '1 day', updated_at = now() - interval '40 days' where id = $1", waiting["id"])
    # the token event's only delivery goes with its webhook: an orphaned event
    assert (await client.delete(f"/v1/webhooks/{tokens_hook['id']}", headers=t.token_auth)).status_code == 204
    assert await admin_conn.fetchval("select count(*) from webhook_event where id = $1", token_event) == 1

    # the API role may not delete from either table itself: only through the function
    for table, row in (("webhook_delivery", old["id"]), ("webhook_event", token_event)):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute(f"delete from {table} where id = $1", row)

    engine = create_async_engine(settings.database.worker_url)  # the scheduler process's login
    window = RetentionSettings(jobs_days=0, desktop_connections_days=0, invite_mails_days=0, security_events_days=0,
                               webhook_deliveries_days=30, batch_size=1)
    try:
        removed = await purge_round(engine, window)
        assert removed["webhook_deliveries"] >= 3 and set(removed) == {"webhook_deliveries"}
        # whatever cutoff it is given, nothing settled less than a day ago goes
        await purge_round(engine, window, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
    finally:
        await engine.dispose()

    left = {r["id"] for r in await admin_conn.fetch("select id from webhook_delivery where organization_id = $1", org)}
    assert left == {young["id"], waiting["id"]}
    assert not await admin_conn.fetchval("select count(*) from webhook_attempt where delivery_id = $1", old["id"])
    events_left = {r["id"] for r in await admin_conn.fetch("select id from webhook_event where organization_id = $1",
                                                           org)}
    assert events_left == {young["event_id"], waiting["event_id"]}  # old's and the orphaned token event are gone
    r = await client.get(f"/v1/webhooks/{jobs_hook['id']}/deliveries", headers=t.token_auth)
    assert r.status_code == 200 and {U(d["id"]) for d in r.json()["items"]} == left
    # not audited: the webhook tables are the worker's bookkeeping
    assert not await admin_conn.fetchval("select count(*) from token_audit_log where organization_id = $1"
                                         " and request_id = 'retention'", org)
