"""The reference runner (``tenant-api runner``) against a real server: it runs real
commands, streams their output as log lines, reports exit codes and time limits; killed
mid-job, its job goes back to the queue after the lease (the scheduler process's lease
reaper) and the next runner finishes it; and a cron schedule's jobs really run, as with
``make run``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tenant_api import scheduler
from tenant_api.app import create_app
from tests.support.tenants import make_token, signup
from tests.support.live import serve

U = uuid.UUID


@pytest.fixture(scope="module")
def live(settings):
    with serve(create_app(settings)) as url:
        yield url


def start_runner(url: str, token: str, *args: str) -> subprocess.Popen[bytes]:
    """``tenant-api runner`` as its own process (and process group, so a test can kill it
    with everything it started)."""
    env = {**os.environ, "RUNNER_TOKEN": token}
    return subprocess.Popen([sys.executable, "-m", "tenant_api.cli", "runner", "--url", url, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.stdout.read().decode(errors="replace") if process.stdout else ""


async def wait_for(client, tenant, job_id: str, *statuses: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}", headers=tenant.token_auth)).json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}, waiting for {statuses}"
        await asyncio.sleep(0.2)


async def logs(client, tenant, job_id: str) -> list[dict]:
    return (await client.get(f"/v1/jobs/{job_id}/logs", headers=tenant.token_auth, params={"limit": 200})).json()["items"]


async def new_job(client, tenant, ref: str, *args: str, **extra) -> dict:
    r = await client.post("/v1/jobs", headers=tenant.token_auth, json={
        "project_id": tenant.project_id, "target": {"kind": "command", "ref": ref, "args": list(args)}, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def test_runs_a_real_command_end_to_end(client, live):
    t = await signup(client)
    runner = await make_token(client, t, ["tasks:write"], project_ids=[t.project_id])
    ok = await new_job(client, t, sys.executable, "-c",
                       "import sys; print('hello'); print('to stderr', file=sys.stderr)")
    bad = await new_job(client, t, "sh", "-c", "echo working; exit 3")
    missing = await new_job(client, t, "/nonexistent/command-" + uuid.uuid4().hex[:6])
    process = start_runner(live, runner["token"], "--lease", "10")
    try:
        done = await wait_for(client, t, ok["id"], "succeeded", "failed")
        assert (done["status"], done["exit_code"], done["attempt"]) == ("succeeded", 0, 1)
        assert done["claimed_by_token_id"] == runner["id"]
        text = "".join(c["data"] for c in await logs(client, t, ok["id"]))
        assert "hello\n" in text and "to stderr\n" in text
        done = await wait_for(client, t, bad["id"], "succeeded", "failed")
        assert (done["status"], done["exit_code"], done["error"]) == ("failed", 3, None)
        assert "".join(c["data"] for c in await logs(client, t, bad["id"])) == "working\n"
        done = await wait_for(client, t, missing["id"], "succeeded", "failed")
        assert done["status"] == "failed" and done["exit_code"] is None and "could not start" in done["error"]
    finally:
        output = stop(process)
    assert runner["token"] not in output  # the runner never logs its token


async def test_output_streams_while_the_command_runs_and_the_time_limit_holds(client, live, tmp_path):
    t = await signup(client)
    runner = await make_token(client, t, ["tasks:write"])
    gate = tmp_path / "gate"
    # prints a line, then waits for the test to open the gate (or the time limit)
    job = await new_job(client, t, "sh", "-c", f"echo started; while [ ! -e {gate} ]; do sleep 0.1; done; echo gated")
    slow = await new_job(client, t, "sleep", "60")
    process = start_runner(live, runner["token"], "--time-limit", "3", "--lease", "6")
    try:
        await wait_for(client, t, job["id"], "running")
        deadline = time.monotonic() + 10
        while "started\n" not in "".join(c["data"] for c in await logs(client, t, job["id"])):
            assert time.monotonic() < deadline, "no log line while the command runs"
            await asyncio.sleep(0.2)
        assert (await client.get(f"/v1/jobs/{job['id']}", headers=t.token_auth)).json()["status"] == "running"
        gate.touch()
        done = await wait_for(client, t, job["id"], "succeeded", "failed")
        assert done["status"] == "succeeded"
        assert "".join(c["data"] for c in await logs(client, t, job["id"])) == "started\ngated\n"
        done = await wait_for(client, t, slow["id"], "succeeded", "failed", timeout=20)
        assert done["status"] == "failed" and "time limit of 3 s exceeded" in done["error"]
        assert at_least(done["finished_at"], done["started_at"], 2.5)
    finally:
        stop(process)


def at_least(later: str, earlier: str, seconds: float) -> bool:
    import datetime as dt

    return (dt.datetime.fromisoformat(later) - dt.datetime.fromisoformat(earlier)).total_seconds() >= seconds


async def test_a_killed_runner_s_job_is_requeued_and_run_again(client, live, settings, tmp_path, admin_conn):
    t = await signup(client)
    runner = await make_token(client, t, ["tasks:write"])
    marker, pid_file = tmp_path / "ran-once", tmp_path / "pid"
    # The first run marks itself, says so and hangs; a second run finishes at once.
    job = await new_job(client, t, "sh", "-c",
                        f"if [ -e {marker} ]; then echo second; exit 0; fi; touch {marker}; echo $$ > {pid_file};"
                        " echo first; exec sleep 60")
    # The scheduler process's duties in a thread of their own (as `make run` runs them).
    _, stop_duties = scheduler.start_in_thread(settings.database.worker_database(), interval=0.5,
                                               settings=settings.with_runners(reap_interval_seconds=0.2))
    first = start_runner(live, runner["token"], "--lease", "2", "--once")
    try:
        await wait_for(client, t, job["id"], "running")
        deadline = time.monotonic() + 10
        while not pid_file.exists() or "first" not in "".join(c["data"] for c in await logs(client, t, job["id"])):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)  # the runner dies (kill -9) ...
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # ... and so does the machine's command
        first.wait(5)
        # Within the lease (2 s) plus a reaper round, the scheduler process requeues it.
        requeued = await wait_for(client, t, job["id"], "queued", timeout=15)
        assert requeued["attempt"] == 1 and requeued["lease_expires_at"] is None
        second = start_runner(live, runner["token"], "--lease", "10", "--once")
        try:
            done = await wait_for(client, t, job["id"], "succeeded", "failed")
            assert (done["status"], done["attempt"], done["exit_code"]) == ("succeeded", 2, 0)
            assert [(c["attempt"], c["data"]) for c in await logs(client, t, job["id"])] == [(1, "first\n"),
                                                                                          (2, "second\n")]
        finally:
            stop(second)
    finally:
        stop(first)
        stop_duties()
    trail = await admin_conn.fetch(
        "select changes -> 'status' ->> 'new' as status, token_id::text, request_id from token_audit_log"
        " where table_name = 'job' and row_id = $1 and action = 'UPDATE' order by id", U(job["id"]))
    assert [(r["status"], r["token_id"]) for r in trail] == [
        ("running", runner["id"]), ("queued", None), ("running", runner["id"]), ("succeeded", runner["id"])]
    assert trail[1]["request_id"] == "lease-reaper"


async def test_a_cron_schedule_s_jobs_really_run(client, live, settings):
    """What `make run` does: the scheduler turns a schedule into jobs, the runner runs them,
    their logs and exit codes show through the API."""
    t = await signup(client)
    runner = await make_token(client, t, ["tasks:write"])
    r = await client.post("/v1/job-schedules", headers=t.token_auth, json={
        "project_id": t.project_id, "name": "every second", "cron": "* * * * * ?", "labels": ["demo"],
        "target": {"kind": "command", "ref": "sh", "args": ["-c", "echo tick from the schedule"]}})
    assert r.status_code == 201, r.text
    schedule = r.json()
    _, stop_duties = scheduler.start_in_thread(settings.database.worker_database(), interval=0.3, settings=settings)
    process = start_runner(live, runner["token"], "--label", "demo", "--project", t.project_id)
    try:
        deadline = time.monotonic() + 30
        while True:
            jobs = (await client.get("/v1/jobs", headers=t.token_auth, params={"schedule_id": schedule["id"],
                                                                      "status": "succeeded"})).json()["items"]
            if jobs:
                break
            assert time.monotonic() < deadline, "no scheduled job ran"
            await asyncio.sleep(0.3)
        job = jobs[0]
        assert job["labels"] == ["demo"] and job["exit_code"] == 0 and job["scheduled_for"] is not None
        assert [c["data"] for c in await logs(client, t, job["id"])] == ["tick from the schedule\n"]
    finally:
        await client.patch(f"/v1/job-schedules/{schedule['id']}", headers=t.token_auth, json={"enabled": False})
        stop(process)
        stop_duties()


def test_runner_needs_a_token():
    result = subprocess.run([sys.executable, "-m", "tenant_api.cli", "runner", "--once"], capture_output=True,
                            env={k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}, timeout=30)
    assert result.returncode != 0 and b"RUNNER_TOKEN" in result.stderr


async def test_a_503_is_retried_with_the_same_key_after_its_retry_after():
    """A draining server ends a waiting claim with 503 and Retry-After (tests/ops/test_serve.py):
    the runner waits that long and claims again with the same Idempotency-Key."""
    import httpx

    from tenant_api.runs.runner import Api, RunnerConfig

    seen: list[tuple[float, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((time.monotonic(), request.headers["idempotency-key"]))
        if len(seen) == 1:
            return httpx.Response(503, headers={"Retry-After": "1", "content-type": "application/problem+json"},
                                  json={"status": 503, "detail": "this server is shutting down"})
        return httpx.Response(204)

    api = Api(RunnerConfig(url="http://runner-test.invalid", token="tapi_unused"))
    await api.client.aclose()
    api.client = httpx.AsyncClient(base_url="http://runner-test.invalid", transport=httpx.MockTransport(answer))
    try:
        r = await api.post("/v1/jobs/claim", {"wait_seconds": 30})
    finally:
        await api.aclose()
    assert r.status_code == 204 and len(seen) == 2
    assert seen[0][1] == seen[1][1]  # the same key: a claim that did succeed is replayed, not repeated
    assert seen[1][0] - seen[0][0] >= 0.95  # Retry-After, not the first backoff step (0.5 s)
