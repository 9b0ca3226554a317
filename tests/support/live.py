"""Real servers for tests that need one: an app under uvicorn on a loopback port in a
thread of its own (clients talk to it over TCP, really concurrently: serve); the API with
its mailer sending to a local SMTP server (aiosmtpd) for the browser and walkthrough
tests (live_server); headless Chromium (Debian's chromium and chromium-driver, installed by
.ci/run) driven by selenium (chromium)."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from litestar import Litestar

from tenant_api.app import create_app
from tenant_api.settings import Settings
from tests.support.live_server import free_port
from tests.support.mail import Inbox, body_of, smtp_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


class AccessLog(logging.Handler):
    """Every line uvicorn's access log writes (method, path with its query string)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Live:
    url: str
    inbox: Inbox
    access: AccessLog
    settings: Settings

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def wait_for_mail(self, email: str, subject_prefix: str, count: int = 1, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            mails = [m for r, m in self.inbox.messages if email.lower() in r and m["Subject"].startswith(subject_prefix)]
            if len(mails) >= count:
                return body_of(mails[count - 1])
            assert time.monotonic() < deadline, f"no mail {subject_prefix!r} to {email}"
            time.sleep(0.05)


@contextmanager
def live_server(settings: Settings, smtp: bool = True) -> Iterator[Live]:
    """smtp=False: no mail server, as `make run` (settings decide: log_links, mail_dir)."""
    with ExitStack() as stack:
        inbox = Inbox()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        live_settings = settings.with_server(public_url=url).with_invites(poll_seconds=0.05)
        if smtp:
            _, smtp_url = stack.enter_context(smtp_server(inbox))
            live_settings = live_settings.with_invites(smtp_url=smtp_url)
        access = AccessLog()
        access_logger = logging.getLogger("uvicorn.access")
        access_logger.addHandler(access)
        stack.callback(access_logger.removeHandler, access)
        access_logger.setLevel(logging.INFO)
        server = uvicorn.Server(uvicorn.Config(create_app(live_settings), host="127.0.0.1", port=port,
                                               log_level="info", lifespan="on", log_config=None))
        thread = threading.Thread(target=server.run, name="live-uvicorn", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
            yield Live(url=url, inbox=inbox, access=access, settings=live_settings)
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@contextmanager
def chromium() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tenant-api-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1000,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def serve(app: Litestar) -> Iterator[str]:
    """Run ``app``; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
