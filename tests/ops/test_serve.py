"""The real thing: `tenant-api serve` as a process, and the installed package.

* SIGTERM with a live stream, a robot socket and a runner's claim waiting for work open:
  the stream gets its final event, the socket a 1001 close (its row marked
  server_shutdown), the claim a 503 problem with Retry-After, the usage records waiting in
  memory are written, the process exits 0 in bounded time, and its log is JSON lines
  with request ids, no traceback and no secret.
* The wheel: built from this checkout, installed into a fresh virtual environment
  (not editable), it carries migrations/ and policies/ and migrates a new database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from tenant_api.db.bootstrap import bootstrap
from tests.support.database import Database
from tests.support.live_server import free_port
from tests.support.tenants import bearer, make_token, signup
from tests.support.rows import channel, make_vm

U = uuid.UUID
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
METRICS_TOKEN = "serve-test-metrics-token"


def server_env(database: Database, settings, port: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {
        **keep,
        "DATABASE_URL": database.api_url,
        "LOGIN_DATABASE_URL": database.login_url,
        "JOBS_DATABASE_URL": database.jobs_url,
        "JWT_SECRET": settings.auth.jwt_secret,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_TOKEN": METRICS_TOKEN,
        "LOG_FORMAT": "json",
        # usage records stay in memory until the shutdown flushes them
        "AUDIT_USAGE_FLUSH_SECONDS": "3600",
        "AUDIT_USAGE_BATCH_SIZE": "10000",
        "SHUTDOWN_TIMEOUT_SECONDS": "10",
        "RATE_LIMIT_REQUESTS": "100000",
    }


async def wait_healthy(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            try:
                if (await c.get(f"{base}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"server did not start: {log.read_text()}")


async def test_sigterm_ends_streams_sockets_and_waiting_claims_cleanly(client, database, settings, admin_conn,
                                                                      tmp_path):
    t = await signup(client)
    conversation = await channel(client, t)
    vm = await make_vm(client, t)
    runner = await make_token(client, t, ["tasks:write"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(BIN / "tenant-api"), "serve"], env=server_env(database, settings, port),
                                stdout=err, stderr=subprocess.STDOUT)
    try:
        await wait_healthy(base, proc, log)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            me = await http.get("/v1/me", headers={**t.token_auth, "X-Request-ID": "serve-test-me"})
            assert me.status_code == 200
            socket_ = await websockets.connect(f"ws://127.0.0.1:{port}/v1/desktop-connections/ws?vm_id={vm['id']}",
                                               additional_headers=t.token_auth)
            hello = json.loads(await socket_.recv())
            assert hello["type"] == "connected"
            # a runner waiting for work (nothing is queued in its organization's project)
            claim = asyncio.create_task(http.post("/v1/jobs/claim", headers=bearer(runner["token"]),
                                                  json={"project_ids": [t.project_id], "wait_seconds": 25}))
            async with http.stream("GET", f"/v1/conversations/{conversation['id']}/stream", headers=t.token_auth) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("retry:")
                async with asyncio.timeout(10):
                    while True:
                        metrics = (await http.get("/metrics",
                                                  headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text
                        if "tenant_api_runner_claims_waiting 1.0" in metrics:
                            break
                        await asyncio.sleep(0.1)
                assert "tenant_api_sse_streams_open 1.0" in metrics
                assert "tenant_api_robot_sockets_open 1.0" in metrics

                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                # the waiting claim ends at once, with a 503 the runner retries (elsewhere)
                claimed = await asyncio.wait_for(claim, 10)
                assert claimed.status_code == 503, claimed.text
                assert claimed.headers["content-type"].startswith("application/problem+json")
                assert claimed.headers["retry-after"] == "1" and "shutting down" in claimed.json()["detail"]
                assert claimed.headers["x-request-id"] and time.monotonic() - started < 5
                received = []
                async with asyncio.timeout(15):
                    async for line in lines:
                        received.append(line)
                event = "\n".join(received)
                assert "event: error" in event and '"status": 503' in event.replace('":503', '": 503'), received
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(15):
                    while True:
                        await socket_.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, closed.value
        returncode = await asyncio.to_thread(proc.wait, 20)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert returncode == 0, log.read_text()
    assert elapsed < 12, elapsed  # the drain does not wait for the streams' own end

    # the socket's row was closed as a shutdown, the waiting usage records were written
    row = await admin_conn.fetchrow("select status, close_reason from desktop_connection where id = $1",
                                    U(hello["connection_id"]))
    assert tuple(row) == ("disconnected", "server_shutdown")
    assert await admin_conn.fetchval("select count(*) from token_usage where request_id = 'serve-test-me'") == 1

    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "tenant_api.access"]
    assert any(line["request_id"] == "serve-test-me" and line["route"] == "/v1/me" for line in access), access
    assert all(line.get("request_id") for line in access)
    for secret in (t.token, t.session, t.password, settings.auth.jwt_secret, METRICS_TOKEN):
        assert secret not in text
    assert any("drained" in line["msg"] for line in lines), text


def test_the_wheel_carries_migrations_and_policies_and_migrates(admin_url, tmp_path):
    """A non-editable install (what the Docker image runs): build the wheel, install it
    into a fresh venv with the locked dependencies it needs, migrate a new database."""
    dist = tmp_path / "dist"
    build = subprocess.run([str(BIN / "uv"), "build", "--wheel", "--out-dir", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(dist.glob("tenant_api-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tenant_api/policies/tenancy.sql" in names and "tenant_api/policies/roles.sql" in names
    revisions = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert {f"tenant_api/migrations/versions/{r}" for r in revisions} <= names
    assert "tenant_api/migrations/env.py" in names
    # the pages the mails link to (tenant_api.web), read through importlib.resources
    static = {p.name for p in (ROOT / "src" / "tenant_api" / "web" / "static").iterdir()}
    assert static and {f"tenant_api/web/static/{n}" for n in static} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # The dependencies come from this environment's lock-installed site-packages, the
    # package itself from the wheel: no network, and no way to see the checkout's src/.
    install = subprocess.run(
        [str(BIN / "uv"), "pip", "install", "--python", str(venv / "bin" / "python"), "--no-deps", str(wheel)],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(Path(sys.executable).parents[1].glob("lib/python3*/site-packages"))
    (site / "zz_locked_deps.pth").write_text(str(ours) + "\n")

    name = f"tenant_wheel_{uuid.uuid4().hex[:8]}"
    result = asyncio.run(bootstrap(admin_url, database=name, owner_password="owner-pw", api_password="api-pw"))
    env = {"PATH": os.environ.get("PATH", ""), "OWNER_DATABASE_URL": result.owner_url, "HOME": str(tmp_path)}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import tenant_api; print(tenant_api.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    migrate = subprocess.run([str(venv / "bin" / "tenant-api"), "migrate"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=300)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    async def check() -> None:
        conn = await asyncpg.connect(result.owner_url)
        try:
            head = await conn.fetchval("select version_num from alembic_version")
            assert head is not None
            # four for the API role, four for its restricted twin (policies/tenancy.sql)
            assert await conn.fetchval("select count(*) from pg_policies where tablename = 'agent'") == 8
        finally:
            await conn.close()

    asyncio.run(check())
