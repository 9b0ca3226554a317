"""The reference runner: ``tenant-api runner --url http://127.0.0.1:8000``.

It claims jobs whose target is a command (``POST /v1/jobs/claim``, long-polling), runs
each as a subprocess -- ``target.ref`` with ``target.args`` (a list of strings) as its
arguments, no shell, in a fresh temporary directory, with the runner's environment minus
its token, for at most ``--time-limit`` seconds -- streams stdout and stderr as log chunks
as they come, heartbeats to keep its lease, and finishes the job with the exit code (or
an error: the command could not be started, or ran out of time). If the job is cancelled,
or its lease is lost (a heartbeat answers 409), it kills the command and moves on.

Every POST carries an Idempotency-Key and is retried with the same key after a network
error or a 5xx: a claim whose answer was lost is replayed, not leaked, and a log chunk
is never written twice. The token comes from RUNNER_TOKEN (an API token with tasks:write,
ideally restricted to the runner's projects), never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger("tenant_api.runner")

CHUNK_BYTES = 32 * 1024
FLUSH_SECONDS = 0.5


class LostClaim(Exception):
    """A 409 from the protocol: the job was cancelled, re-claimed or its lease expired."""


@dataclass
class RunnerConfig:
    url: str
    token: str
    project_ids: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    time_limit: float = 600.0
    lease_seconds: int = 60
    wait_seconds: float = 30.0
    concurrency: int = 1
    once: bool = False  # run one job (or find none) and stop


MAX_RETRY_AFTER_SECONDS = 30.0


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (0 when absent or not a number of seconds)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


class Api:
    """The runner's HTTP side: every POST idempotent, retried a few times on failure."""

    def __init__(self, config: RunnerConfig) -> None:
        self.client = httpx.AsyncClient(base_url=config.url, headers={"Authorization": f"Bearer {config.token}"},
                                        timeout=httpx.Timeout(config.wait_seconds + 15), trust_env=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def post(self, path: str, body: dict[str, Any], attempts: int = 5) -> httpx.Response:
        key = uuid.uuid4().hex
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                response = await self.client.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise
                log.warning("POST %s failed (%s); retrying with the same Idempotency-Key", path, exc)
            else:
                if response.status_code < 500 or attempt == attempts:
                    return response
                log.warning("POST %s: %s; retrying with the same Idempotency-Key", path, response.status_code)
                # a 503 says when (a draining server: at once, elsewhere; a database outage: seconds)
                delay = max(delay, min(_retry_after(response), MAX_RETRY_AFTER_SECONDS))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
        raise AssertionError("unreachable")


class JobRun:
    """One claimed job: its process, its log stream, its heartbeats."""

    def __init__(self, api: Api, config: RunnerConfig, claim: dict[str, Any]) -> None:
        self.api = api
        self.config = config
        self.job = claim["job"]
        self.secret = claim["claim_secret"]
        self.heartbeat_every = max(1.0, float(claim["heartbeat_seconds"]))
        self.base = f"/v1/jobs/{self.job['id']}"
        self.buffer: list[str] = []
        self.buffered = 0
        self.lost: str | None = None
        self.flushing = asyncio.Lock()

    async def run(self) -> None:
        target = self.job["target"]
        args = target.get("args") or []
        if target.get("kind") != "command" or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            await self.finish(None, "the reference runner runs commands with a list of string arguments only")
            return
        log.info("job %s (attempt %d): %s %s", self.job["id"], self.job["attempt"], target["ref"], args)
        env = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
        with tempfile.TemporaryDirectory(prefix="tenant-api-job-") as workdir:
            try:
                process = await asyncio.create_subprocess_exec(
                    target["ref"], *args, cwd=workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
            except OSError as exc:
                await self.finish(None, f"could not start {target['ref']!r}: {exc.strerror or exc}")
                return
            exit_code, error = await self.supervise(process)
        await self.flush()
        if self.lost is None:
            await self.finish(exit_code, error)

    async def supervise(self, process: asyncio.subprocess.Process) -> tuple[int | None, str | None]:
        assert process.stdout is not None and process.stderr is not None
        readers = [asyncio.create_task(self.pump(process.stdout)), asyncio.create_task(self.pump(process.stderr))]
        beats = asyncio.create_task(self.heartbeats())
        flusher = asyncio.create_task(self.flush_periodically())
        error = None
        try:
            async with asyncio.timeout(self.config.time_limit):
                waiter = asyncio.create_task(process.wait())
                done, _ = await asyncio.wait([waiter, beats], return_when=asyncio.FIRST_COMPLETED)
                if waiter not in done:  # the heartbeats stopped: claim lost
                    waiter.cancel()
                    raise LostClaim(self.lost or "claim lost")
                await asyncio.gather(*readers)
        except TimeoutError:
            error = f"time limit of {self.config.time_limit:g} s exceeded: killed"
            kill(process)
        except LostClaim as exc:
            log.warning("job %s: %s; killing the command", self.job["id"], exc)
            kill(process)
        finally:
            for task in (beats, flusher, *readers):
                task.cancel()
            await asyncio.gather(beats, flusher, *readers, return_exceptions=True)
            if process.returncode is None:
                kill(process)
                await process.wait()
        return (process.returncode if error is None else None), error

    async def pump(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.buffer.append(line.decode("utf-8", "replace"))
            self.buffered += len(line)
            if self.buffered >= CHUNK_BYTES:
                await self.flush()

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        async with self.flushing:
            if not self.buffer or self.lost is not None:
                return
            text, self.buffer, self.buffered = "".join(self.buffer), [], 0
            while text:
                piece = text.encode()[:CHUNK_BYTES].decode("utf-8", "ignore") or text[:1]
                text = text[len(piece):]
                r = await self.api.post(f"{self.base}/logs", {"claim_secret": self.secret, "data": piece})
                if r.status_code == 409:
                    self.lost = r.json().get("detail", "claim lost")
                    return
                if r.status_code != 201:
                    log.warning("job %s: log chunk refused: %s %s", self.job["id"], r.status_code, r.text[:200])

    async def heartbeats(self) -> None:
        """Returns (ending the job's run) once the claim is lost."""
        while True:
            await asyncio.sleep(self.heartbeat_every)
            r = await self.api.post(f"{self.base}/heartbeat",
                                    {"claim_secret": self.secret, "lease_seconds": self.config.lease_seconds})
            if r.status_code == 409:
                self.lost = r.json().get("detail", "claim lost")
                return

    async def finish(self, exit_code: int | None, error: str | None) -> None:
        body: dict[str, Any] = {"claim_secret": self.secret}
        if exit_code is not None:
            body["exit_code"] = exit_code
        if error is not None:
            body["error"] = error[:2000]
        r = await self.api.post(f"{self.base}/finish", body)
        if r.status_code == 200:
            log.info("job %s finished: %s (exit code %s)", self.job["id"], r.json()["status"], exit_code)
        else:
            log.warning("job %s: finish refused: %s %s", self.job["id"], r.status_code, r.text[:200])


def kill(process: asyncio.subprocess.Process) -> None:
    """The command and whatever it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


async def claim_next(api: Api, config: RunnerConfig) -> dict[str, Any] | None:
    body: dict[str, Any] = {"kinds": ["command"], "labels": config.labels, "wait_seconds": config.wait_seconds,
                            "lease_seconds": config.lease_seconds}
    if config.project_ids:
        body["project_ids"] = config.project_ids
    r = await api.post("/v1/jobs/claim", body)
    if r.status_code == 204:
        return None
    if r.status_code != 200:
        raise RuntimeError(f"claim refused: {r.status_code} {r.text[:300]}")
    return r.json()


async def work(config: RunnerConfig, stop: asyncio.Event | None = None) -> int:
    """Claim and run jobs until ``stop`` (or one round with ``once``). Returns how many ran."""
    stop = stop or asyncio.Event()
    api = Api(config)
    ran = 0

    async def worker() -> None:
        nonlocal ran
        while not stop.is_set():
            try:
                claim = await claim_next(api, config)
            except (RuntimeError, httpx.HTTPError) as exc:
                log.warning("%s; trying again in 5 s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)
                continue
            if claim is not None:
                await JobRun(api, config, claim).run()
                ran += 1
            if config.once:
                return

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, config.concurrency))))
    finally:
        await api.aclose()
    return ran


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tenant-api runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("TENANT_API_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--project", action="append", default=[], dest="project_ids",
                        help="claim only this project's jobs (repeat for several)")
    parser.add_argument("--label", action="append", default=[], dest="labels",
                        help="a label of this runner (repeat); it claims jobs whose labels it all has")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds a command may run (default 600)")
    parser.add_argument("--lease", type=int, default=60, help="lease seconds (default 60; heartbeats every third)")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    args = parser.parse_args(argv)
    token = os.environ.get("RUNNER_TOKEN", "")
    if not token:
        sys.exit("RUNNER_TOKEN is required: an API token with tasks:write")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = RunnerConfig(url=args.url, token=token, project_ids=args.project_ids, labels=args.labels,
                          time_limit=args.time_limit, lease_seconds=args.lease, concurrency=args.concurrency,
                          once=args.once)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(work(config, stop))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not runner.done():
            # A stop while waiting for work ends the claim's long poll at once; a job that is
            # running is killed and left to its lease (it goes back to the queue).
            runner.cancel()
        stopper.cancel()
        await asyncio.gather(runner, stopper, return_exceptions=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
