"""Conversations: channels and DMs, members, messages, and the live stream (SSE over LISTEN/NOTIFY).

The stream tests run the app under uvicorn on a loopback port in a thread of its own
(Litestar's test client buffers a whole response, and an event stream never ends), and
read it with httpx streaming.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar

from tenant_api.app import create_app
from tests.support.live import serve
from tests.support.tenants import Tenant, bearer, make_token, signup
from tests.support.rows import channel

U = uuid.UUID


# --- helpers ----------------------------------------------------------------------------

async def agent(client, tenant: Tenant, project_id: str | None = None) -> dict:
    r = await client.post("/v1/agents", headers=tenant.token_auth,
                          json={"project_id": project_id or tenant.project_id, "name": f"a-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    return r.json()


async def project(client, tenant: Tenant) -> str:
    r = await client.post("/v1/projects", headers=tenant.token_auth, json={"workspace_id": tenant.workspace_id, "name": uuid.uuid4().hex[:8]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def post(client, tenant: Tenant, conversation_id: str, body: str, headers: dict | None = None, **extra: Any) -> dict:
    r = await client.post(f"/v1/conversations/{conversation_id}/messages", headers=headers or tenant.token_auth,
                          json={"body": body, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def problem_field(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    return r.json()["errors"][0]["field"]


# --- the live server ---------------------------------------------------------------------

@dataclass
class Live:
    url: str
    app: Litestar

    @property
    def hub(self) -> Any:
        return self.app.state.conversation_hub


@pytest.fixture(scope="session")
def live(settings) -> Any:
    app = create_app(settings)
    with serve(app) as url:
        yield Live(url, app)


@pytest.fixture
async def http(live: Live) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as c:
        yield c


class Events:
    """An open event stream: frames as dicts ({"event", "id", "data", "comment", "retry"})."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.raw: list[str] = []

    async def frame(self, timeout: float = 5.0) -> dict | None:
        """The next frame, or None once the server ended the stream."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                try:
                    line = await anext(self._lines)
                except StopAsyncIteration:
                    return None
                self.raw.append(line)
                if line == "":
                    if fields:
                        return fields
                    continue
                name, _, value = line.partition(":")
                fields[name or "comment"] = value[1:] if value.startswith(" ") else value

    async def event(self, timeout: float = 5.0) -> dict | None:
        """The next real event (skipping comments and the retry hint), data decoded."""
        while True:
            f = await self.frame(timeout)
            if f is None or "event" in f:
                if f is not None:
                    f["data"] = json.loads(f["data"])
                return f


@asynccontextmanager
async def stream(http: httpx.AsyncClient, conversation_id: str, headers: dict, **params: Any) -> AsyncIterator[Events]:
    async with http.stream("GET", f"/v1/conversations/{conversation_id}/stream", headers=headers,
                           params=params) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        events = Events(r)
        # The first frame is sent after the subscription exists.
        assert (await events.frame())["retry"] == "2000"
        yield events


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --- conversations and members -------------------------------------------------------------

async def test_channel_and_dm_rules(client, admin_conn):
    t = await signup(client)
    other = await signup(client)
    bot = await agent(client, t)

    # A channel needs a name, unique per project whatever the case.
    r = await client.post("/v1/conversations", headers=t.token_auth, json={"project_id": t.project_id, "kind": "CHANNEL"})
    assert problem_field(r) == "name"
    general = await channel(client, t, "General")
    r = await client.post("/v1/conversations", headers=t.token_auth,
                          json={"project_id": t.project_id, "kind": "CHANNEL", "name": "general"})
    assert r.status_code == 409 and "lower(name)" in r.json()["detail"], r.text
    p2 = await project(client, t)
    await channel(client, t, "general", project_id=p2)  # another project: fine
    r = await client.patch(f"/v1/conversations/{general['id']}", headers=t.token_auth, json={"name": None})
    assert problem_field(r) == "name"
    r = await client.patch(f"/v1/conversations/{general['id']}", headers=t.token_auth, json={"name": "town-square"})
    assert r.status_code == 200 and r.json()["name"] == "town-square", r.text
    r = await client.patch(f"/v1/conversations/{general['id']}", headers=t.token_auth, json={"kind": "DM"})
    assert r.status_code == 422, r.text  # the kind never changes

    # A DM has exactly two distinct members.
    me = {"member_type": "USER", "member_id": t.user_id}
    it = {"member_type": "AGENT", "member_id": bot["id"]}
    for members in ([me], [me, me], [me, it, {"member_type": "AGENT", "member_id": (await agent(client, t))["id"]}]):
        r = await client.post("/v1/conversations", headers=t.token_auth,
                              json={"project_id": t.project_id, "kind": "DM", "members": members})
        assert problem_field(r) == "members"
    r = await client.post("/v1/conversations", headers=t.token_auth,
                          json={"project_id": t.project_id, "kind": "DM", "members": [me, it]})
    assert r.status_code == 201, r.text
    dm = r.json()
    assert dm["kind"] == "DM" and dm["name"] is None
    r = await client.get(f"/v1/conversations/{dm['id']}/members", headers=t.token_auth)
    assert sorted((m["member_type"], m["member_id"]) for m in r.json()["items"]) == [("AGENT", bot["id"]),
                                                                                     ("USER", t.user_id)]
    # ... fixed afterwards.
    r = await client.post(f"/v1/conversations/{dm['id']}/members", headers=t.token_auth,
                          json={"member_type": "AGENT", "member_id": (await agent(client, t))["id"]})
    assert r.status_code == 409 and "DM" in r.json()["detail"], r.text
    member = r2 = (await client.get(f"/v1/conversations/{dm['id']}/members", headers=t.token_auth)).json()["items"][0]
    r2 = await client.delete(f"/v1/conversations/{dm['id']}/members/{member['id']}", headers=t.token_auth)
    assert r2.status_code == 409, r2.text

    # A DM member of another organization is refused, naming the member.
    r = await client.post("/v1/conversations", headers=t.token_auth, json={
        "project_id": t.project_id, "kind": "DM",
        "members": [me, {"member_type": "USER", "member_id": other.user_id}]})
    assert problem_field(r) == "members[1].member_id"

    # Filter by kind.
    r = await client.get("/v1/conversations", headers=t.token_auth, params={"kind": "DM"})
    assert [c["id"] for c in r.json()["items"]] == [dm["id"]]
    r = await client.get("/v1/conversations", headers=t.token_auth, params={"kind": "CHANNEL", "project_id": t.project_id})
    assert [c["id"] for c in r.json()["items"]] == [general["id"]]

    # Deleting a conversation takes its members and messages with it.
    await post(client, t, dm["id"], "bye")
    r = await client.delete(f"/v1/conversations/{dm['id']}", headers=t.token_auth)
    assert r.status_code == 204, r.text
    for table in ("conversation_member", "conversation_message"):
        n = await admin_conn.fetchval(f"select count(*) from {table} where conversation_id = $1", U(dm["id"]))
        assert n == 0, table


async def test_membership_validation(client, admin_conn):
    t = await signup(client)
    other = await signup(client)
    c = await channel(client, t)
    members = f"/v1/conversations/{c['id']}/members"
    p2 = await project(client, t)
    foreign_agent = await agent(client, t, project_id=p2)
    other_org_agent = await agent(client, other)

    for body in ({"member_type": "AGENT", "member_id": foreign_agent["id"]},    # another project
                 {"member_type": "AGENT", "member_id": other_org_agent["id"]},  # another organization
                 {"member_type": "USER", "member_id": other.user_id},           # not a member here
                 {"member_type": "AGENT", "member_id": t.user_id}):             # a user is no agent
        r = await client.post(members, headers=t.token_auth, json=body)
        assert problem_field(r) == "member_id"
        assert body["member_id"] in r.json()["detail"]

    bot = await agent(client, t)
    r = await client.post(members, headers=t.token_auth, json={"member_type": "AGENT", "member_id": bot["id"]})
    assert r.status_code == 201 and r.json()["project_id"] == t.project_id, r.text
    r = await client.post(members, headers=t.token_auth, json={"member_type": "USER", "member_id": t.user_id})
    assert r.status_code == 201, r.text
    user_member = r.json()
    r = await client.post(members, headers=t.token_auth, json={"member_type": "USER", "member_id": t.user_id})
    assert r.status_code == 409, r.text
    r = await client.get(members, headers=t.token_auth, params={"member_type": "USER"})
    assert [m["member_id"] for m in r.json()["items"]] == [t.user_id]
    r = await client.delete(f"{members}/{user_member['id']}", headers=t.token_auth)
    assert r.status_code == 204, r.text
    r = await client.get(members, headers=t.token_auth)
    assert [m["member_id"] for m in r.json()["items"]] == [bot["id"]]

    # The database holds the same line, whatever the API checks: an agent of another
    # project, or a user outside the organization, cannot be a member even for a superuser.
    import asyncpg

    org, conv, prj = U(t.organization_id), U(c["id"]), U(t.project_id)
    for mtype, mid in (("AGENT", U(foreign_agent["id"])), ("USER", U(other.user_id))):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await admin_conn.execute(
                "insert into conversation_member (organization_id, project_id, conversation_id, member_type, member_id)"
                " values ($1, $2, $3, $4, $5)", org, prj, conv, mtype, mid)

    # Deleting the agent removes it from its conversations.
    r = await client.delete(f"/v1/agents/{bot['id']}", headers=t.token_auth)
    assert r.status_code == 204, r.text
    r = await client.get(members, headers=t.token_auth)
    assert r.json()["items"] == []


# --- messages ------------------------------------------------------------------------------

async def test_messages_senders_order_and_pagination(client, admin_conn):
    t = await signup(client)
    c = await channel(client, t)
    msgs = f"/v1/conversations/{c['id']}/messages"
    bot = await agent(client, t)
    stranger = await agent(client, t, project_id=await project(client, t))

    first = await post(client, t, c["id"], "m1")
    assert (first["seq"], first["sender_type"], first["sender_id"]) == (1, "USER", t.user_id)
    # A USER message is from the credential's user, whatever the body claims.
    other = await signup(client)
    r = await client.post(msgs, headers=t.token_auth, json={"body": "x", "sender_id": other.user_id})
    assert problem_field(r) == "sender_id"
    assert (await post(client, t, c["id"], "m2", sender_id=t.user_id))["sender_id"] == t.user_id
    # AGENT: an agent of the conversation's project, named.
    assert (await post(client, t, c["id"], "m3", sender_type="AGENT", sender_id=bot["id"]))["sender_id"] == bot["id"]
    for bad in ({"sender_type": "AGENT"}, {"sender_type": "AGENT", "sender_id": stranger["id"]},
                {"sender_type": "SYSTEM", "sender_id": t.user_id}):
        r = await client.post(msgs, headers=t.token_auth, json={"body": "x", **bad})
        assert problem_field(r) == "sender_id"
    system = await post(client, t, c["id"], "m4", sender_type="SYSTEM")
    assert system["sender_id"] is None
    await post(client, t, c["id"], "m5")
    r = await client.post(msgs, headers=t.token_auth, json={"body": "x" * 16001})
    assert r.status_code == 422, r.text
    r = await client.post(msgs, headers=t.token_auth, json={"body": ""})
    assert r.status_code == 422, r.text

    # Refused posts used no seq: 1..5, gap-free.
    async def page(**params: Any) -> tuple[list[int], int | None, int | None]:
        r = await client.get(msgs, headers=t.token_auth, params=params)
        assert r.status_code == 200, r.text
        b = r.json()
        return [m["seq"] for m in b["items"]], b["next_before"], b["next_after"]

    assert await page() == ([5, 4, 3, 2, 1], None, None)
    assert await page(limit=2) == ([5, 4], 4, None)
    assert await page(limit=2, before=4) == ([3, 2], 2, None)
    assert await page(limit=2, before=2) == ([1], None, None)
    assert await page(limit=2, after=0) == ([1, 2], None, 2)
    assert await page(limit=2, after=2) == ([3, 4], None, 4)
    assert await page(limit=2, after=4) == ([5], None, None)
    assert await page(after=1, before=5) == ([2, 3, 4], None, None)
    r = await client.get(msgs, headers=t.token_auth, params={"before": 0})
    assert r.status_code == 422
    assert (await client.get(f"/v1/conversations/{c['id']}", headers=t.token_auth)).json()["last_seq"] == 5


async def test_concurrent_posts_get_distinct_gapless_seqs(client, http):
    t = await signup(client)
    c = await channel(client, t)
    rs = await asyncio.gather(*(http.post(f"/v1/conversations/{c['id']}/messages", headers=t.token_auth,
                                          json={"body": f"m{i}"}) for i in range(20)))
    assert all(r.status_code == 201 for r in rs), [r.text for r in rs if r.status_code != 201]
    assert sorted(r.json()["seq"] for r in rs) == list(range(1, 21))


# --- the live stream ---------------------------------------------------------------------

async def test_stream_delivers_and_resumes(client, http, live, admin_conn):
    t = await signup(client)
    c = await channel(client, t)
    await post(client, t, c["id"], "before the stream")
    async with stream(http, c["id"], t.token_auth) as s:
        sent = await post(client, t, c["id"], "hello")
        ev = await s.event()
        assert ev["event"] == "message" and ev["id"] == "2" and ev["data"] == sent
        # Between fetches an open stream holds no transaction (nor a pooled connection in
        # one). Other API-role work (the usage recorder, the reaper) may be mid-statement
        # at any moment, so look for a transaction left open: one that stays.
        for _ in range(40):
            open_tx = await admin_conn.fetchval(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and usename = 'tenant_api' and state like 'idle in transaction%'")
            if open_tx == 0:
                break
            await asyncio.sleep(0.05)
        assert open_tx == 0, "an API-role connection stays idle in a transaction while the stream is open"
        await post(client, t, c["id"], "again")
        assert (await s.event())["data"]["body"] == "again"
    # Resume: Last-Event-ID (what EventSource sends on reconnect) or ?after=.
    async with stream(http, c["id"], {**t.token_auth, "Last-Event-ID": "1"}) as s:
        assert [(await s.event())["data"]["body"] for _ in range(2)] == ["hello", "again"]
    async with stream(http, c["id"], t.token_auth, after=0) as s:
        assert (await s.event())["data"]["body"] == "before the stream"


async def test_stream_heartbeat_lifetime_and_deleted_conversation(client, http, live):
    t = await signup(client)
    c = await channel(client, t)
    hub = live.hub
    hub.heartbeat, hub.max_stream_seconds = 0.2, 0.7
    try:
        async with stream(http, c["id"], t.token_auth) as s:
            assert await s.frame() == {"comment": "keep-alive"}
            while (f := await s.frame()) is not None:  # ends by itself; EventSource reconnects
                assert f == {"comment": "keep-alive"}
        hub.max_stream_seconds = 600.0
        # A deleted conversation ends its streams (seen at the next heartbeat poll: a
        # delete sends no notification).
        async with stream(http, c["id"], t.token_auth) as s:
            r = await client.delete(f"/v1/conversations/{c['id']}", headers=t.token_auth)
            assert r.status_code == 204
            ev = await s.event()
            assert ev["event"] == "error" and ev["data"] == {"status": 404, "detail": "conversation not found"}
            assert await s.frame() is None
    finally:
        hub.heartbeat, hub.max_stream_seconds = 15.0, 600.0


async def test_stream_isolation_between_organizations(client, http, live, api_conn):
    a = await signup(client)
    b = await signup(client)
    ca = await channel(client, a)
    cb = await channel(client, b)

    # Another organization's conversation: 404 before any stream starts.
    r = await http.get(f"/v1/conversations/{cb['id']}/stream", headers=a.token_auth)
    assert r.status_code == 404, r.text

    async with stream(http, ca["id"], a.token_auth) as s:
        await until(lambda: live.hub.listening)
        seen = live.hub.notifications
        secret = f"b-secret-{uuid.uuid4().hex}"
        mb = await post(client, b, cb["id"], secret)
        # B's notification reached the very LISTEN connection A's stream hangs on ...
        await until(lambda: live.hub.notifications > seen)
        # ... and so does a forged one naming A's conversation with B's message (anyone
        # connected may NOTIFY): it only makes A's stream look, as A, under RLS.
        await api_conn.execute("select pg_notify('conversation_message', $1)", json.dumps(
            {"organization_id": a.organization_id, "conversation_id": ca["id"], "id": mb["id"], "seq": mb["seq"]}))
        await until(lambda: live.hub.notifications > seen + 1)
        await api_conn.execute("select pg_notify('conversation_message', 'not json')")
        ma = await post(client, a, ca["id"], "for A")
        ev = await s.event()
        assert ev["data"] == ma  # the first and only event: A's own message
        assert not any(secret in line or mb["id"] in line for line in s.raw)

    # The notification itself never carries the body (any listener sees it).
    await api_conn.execute("listen conversation_message")
    got: asyncio.Queue[str] = asyncio.Queue()
    await api_conn.add_listener("conversation_message", lambda *args: got.put_nowait(args[-1]))
    await post(client, b, cb["id"], secret)
    payload = json.loads(await asyncio.wait_for(got.get(), 5))
    assert set(payload) == {"organization_id", "conversation_id", "id", "seq"}
    assert payload["conversation_id"] == cb["id"] and secret not in json.dumps(payload)


async def test_stream_respects_project_restriction(client, http):
    t = await signup(client)
    p2 = await project(client, t)
    mine = await channel(client, t)
    theirs = await channel(client, t, project_id=p2)
    tok = await make_token(client, t, ["conversations:read"], project_ids=[t.project_id])
    h = bearer(tok["token"])
    r = await http.get(f"/v1/conversations/{theirs['id']}/stream", headers=h)
    assert r.status_code == 404, r.text
    r = await client.get(f"/v1/conversations/{theirs['id']}/messages", headers=h)
    assert r.status_code == 404, r.text
    r = await client.get("/v1/conversations", headers=h)
    assert [c["id"] for c in r.json()["items"]] == [mine["id"]]
    async with stream(http, mine["id"], h) as s:
        await post(client, t, theirs["id"], "elsewhere")
        m = await post(client, t, mine["id"], "here")
        assert (await s.event())["data"] == m


async def test_revoked_token_stream_stops(client, http, live):
    t = await signup(client)
    c = await channel(client, t)
    tok = await make_token(client, t, ["conversations:read"])
    async with stream(http, c["id"], bearer(tok["token"])) as s:
        first = await post(client, t, c["id"], "before revocation")
        assert (await s.event())["data"] == first
        r = await client.delete(f"/v1/tokens/{tok['id']}", headers=t.session_auth)
        assert r.status_code == 204, r.text
        await post(client, t, c["id"], "after revocation")
        ev = await s.event()
        assert ev["event"] == "error" and ev["data"] == {"status": 401, "detail": "credential revoked"}
        assert await s.frame() is None
        assert not any("after revocation" in line for line in s.raw)
    r = await http.get(f"/v1/conversations/{c['id']}/stream", headers=bearer(tok["token"]))
    assert r.status_code == 401


# --- the common contract -------------------------------------------------------------------

async def test_other_organizations_ids_are_404_everywhere(client, http):
    a = await signup(client)
    b = await signup(client)
    c = await channel(client, b)
    bot = await agent(client, b)
    r = await client.post(f"/v1/conversations/{c['id']}/members", headers=b.token_auth,
                          json={"member_type": "AGENT", "member_id": bot["id"]})
    member = r.json()
    base = f"/v1/conversations/{c['id']}"
    for method, path, body in [
        ("GET", base, None),
        ("PATCH", base, {"name": "mine"}),
        ("DELETE", base, None),
        ("GET", f"{base}/members", None),
        ("POST", f"{base}/members", {"member_type": "USER", "member_id": a.user_id}),
        ("GET", f"{base}/members/{member['id']}", None),
        ("DELETE", f"{base}/members/{member['id']}", None),
        ("GET", f"{base}/messages", None),
        ("POST", f"{base}/messages", {"body": "hi"}),
    ]:
        r = await client.request(method, path, headers=a.token_auth, json=body)
        assert r.status_code == 404, (method, path, r.text)
    r = await http.get(f"{base}/stream", headers=a.token_auth)
    assert r.status_code == 404, r.text
    # ... and as a body reference: 422 naming the field.
    r = await client.post("/v1/conversations", headers=a.token_auth, json={"project_id": b.project_id, "kind": "CHANNEL",
                                                                  "name": "x"})
    assert problem_field(r) == "project_id"
    r = await client.get(f"{base}", headers=b.token_auth)
    assert r.status_code == 200 and r.json()["name"] == c["name"] and r.json()["last_seq"] == 0


async def test_missing_scope_is_403_naming_it(client, http):
    t = await signup(client)
    c = await channel(client, t)
    reader = bearer((await make_token(client, t, ["conversations:read"]))["token"])
    none = bearer((await make_token(client, t, ["agents:read"]))["token"])
    base = f"/v1/conversations/{c['id']}"
    cases = [(none, "GET", "/v1/conversations", None, "conversations:read"),
             (none, "GET", f"{base}/messages", None, "conversations:read"),
             (none, "GET", f"{base}/members", None, "conversations:read"),
             (reader, "POST", "/v1/conversations", {"project_id": t.project_id, "kind": "CHANNEL", "name": "n"},
              "conversations:write"),
             (reader, "POST", f"{base}/messages", {"body": "hi"}, "conversations:write"),
             (reader, "POST", f"{base}/members", {"member_type": "USER", "member_id": t.user_id},
              "conversations:write"),
             (reader, "DELETE", base, None, "conversations:write")]
    for h, method, path, body, scope in cases:
        r = await client.request(method, path, headers=h, json=body)
        assert r.status_code == 403 and r.json()["missing_scope"] == scope, (method, path, r.text)
        assert scope in r.json()["detail"]
    r = await http.get(f"{base}/stream", headers=none)
    assert r.status_code == 403 and r.json()["missing_scope"] == "conversations:read", r.text
    # A reader reads.
    assert (await client.get(f"{base}/messages", headers=reader)).status_code == 200


async def test_audit_rows(client, admin_conn):
    t = await signup(client)
    bot = await agent(client, t)
    c = await channel(client, t, members=[{"member_type": "AGENT", "member_id": bot["id"]}])
    m = await post(client, t, c["id"], "confidential words")
    rows = await admin_conn.fetch(
        "select table_name, action, token_id::text, changes from token_audit_log"
        " where organization_id = $1 and table_name like 'conversation%' order by id", U(t.organization_id))
    assert [(r["table_name"], r["action"], r["token_id"]) for r in rows] == [
        ("conversation", "INSERT", t.token_id),
        ("conversation_member", "INSERT", t.token_id),
        ("conversation_message", "INSERT", t.token_id),
    ]  # posting bumps last_seq, which is noise: no UPDATE row for the conversation
    message = json.loads(rows[2]["changes"])
    assert message["id"] == m["id"] and message["seq"] == 1 and "body" not in message
    assert "confidential" not in json.dumps([json.loads(r["changes"]) for r in rows])
    r = await client.patch(f"/v1/conversations/{c['id']}", headers=t.token_auth, json={"name": "renamed"})
    assert r.status_code == 200
    change = await admin_conn.fetchval(
        "select changes from token_audit_log where row_id = $1 and action = 'UPDATE'", U(c["id"]))
    assert json.loads(change) == {"name": {"old": c["name"], "new": "renamed"}}


async def test_message_history_is_immutable_for_the_api_role(client, api_conn):
    """No UPDATE or DELETE grant on messages: even raw SQL as the API role cannot rewrite history."""
    import asyncpg

    for sql in ("update conversation_message set body = 'x'", "delete from conversation_message"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute(sql)
