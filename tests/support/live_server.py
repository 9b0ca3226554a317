"""Real processes for the tests that need what only a real server shows: `tenant-api serve`
(uvicorn, its own log file) and `tenant-api scheduler`, started with an environment of
the test's choosing and stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def tenant_api(command: list[str], log: Path, env: dict[str, str], wait_for: str | None = None) -> Iterator[Process]:
    """``tenant-api <command>`` with ``env`` added to ours, its output in ``log``. With
    ``wait_for`` (a URL), returns once it answers."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tenant_api.cli", *command], env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
    process = Process(proc, log)
    try:
        if wait_for:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"tenant-api {command} exited:\n{process.text()[-3000:]}"
                try:
                    if httpx.get(wait_for, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"tenant-api {command} did not answer:\n{process.text()[-3000:]}"
                time.sleep(0.1)
        yield process
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextmanager
def api_server(log: Path, env: dict[str, str]) -> Iterator[Process]:
    """`tenant-api serve` on a free loopback port."""
    port = free_port()
    with tenant_api(["serve"], log, {"HOST": "127.0.0.1", "PORT": str(port), **env},
                    wait_for=f"http://127.0.0.1:{port}/health") as process:
        process.url = f"http://127.0.0.1:{port}"
        yield process
