"""docs/walkthroughs.md, executed: its ``sh`` blocks run in order in one bash process
(variables carry over, as in the reader's terminal) against a real uvicorn server in
`make run`'s mail mode (mails logged and written to a directory), and each
``<!-- walkthrough-browser: NAME -->`` step is done in headless Chromium as the text
says. A failing command (``curl -f``, ``jq -e``, ``grep -x``) fails the test with the
step's output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn  # noqa: F401 -- the live server's (tests.support.live)
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tenant_api.scopes import ROLE_SCOPES  # noqa: F401
from tests.support.live import Live, chromium, live_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "walkthroughs.md"
BLOCK = re.compile(r"```sh\n(.*?)```|<!-- walkthrough-browser: ([\w-]+) -->", re.S)
MARK = "__walkthrough_step_done__"


def steps() -> list[tuple[str, str]]:
    """("sh", script) and ("browser", action) in document order."""
    return [("sh", m.group(1)) if m.group(1) is not None else ("browser", m.group(2))
            for m in BLOCK.finditer(DOC.read_text())]


class Shell:
    """One bash, fed step after step; stops at the first failing command (set -e)."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.run("set -eo pipefail")

    def run(self, script: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(script + f"\necho {MARK}\n")
        self.proc.stdin.flush()
        out: list[str] = []
        for line in self.proc.stdout:
            if line.strip() == MARK:
                return "".join(out)
            out.append(line)
        raise AssertionError(f"the step failed:\n{script}\n--- output ---\n{''.join(out)}")

    def value(self, name: str) -> str:
        return self.run(f'printf "%s\\n" "${name}"').strip()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _signup_and_accept(live: Live, shell: Shell, browser: Any) -> None:
    """Step 2.3 as written: open $LINK, name Bob, password bob-password-1, press
    "Create account and accept", see "You joined the organization"."""
    browser.get(shell.value("LINK"))
    WebDriverWait(browser, 15).until(ec.visibility_of_element_located((By.ID, "signup")))
    browser.find_element(By.ID, "signup-name").send_keys("Bob")
    browser.find_element(By.ID, "signup-password").send_keys("bob-password-1")
    button = browser.find_element(By.ID, "signup-button")
    assert button.text == "Create account and accept"
    button.click()
    WebDriverWait(browser, 15).until(ec.visibility_of_element_located((By.ID, "done")))
    assert "You joined the organization" in browser.find_element(By.ID, "done-text").text


BROWSER_STEPS: dict[str, Callable[[Live, Shell, Any], None]] = {"signup-and-accept": _signup_and_accept}


@pytest.fixture(scope="module")
def dev_live(settings) -> Iterator[tuple[Live, str]]:
    """The API as `make run` serves it: no SMTP server, mails logged and kept in a directory."""
    with tempfile.TemporaryDirectory(prefix="walkthrough-mail-") as mails:
        with live_server(settings.with_invites(mail_dir=mails, log_links=True), smtp=False) as live:
            yield live, mails


def test_the_walkthroughs_run_as_written(dev_live, tmp_path):
    live, mails = dev_live
    workdir = str(tmp_path)  # the reader's checkout; files the steps write land here
    # make run's demo owner (its password lives in .data/demo_password there).
    password = f"demo-{uuid.uuid4().hex}"
    email = f"owner.{uuid.uuid4().hex[:8]}@demo.example"
    with httpx.Client(base_url=live.url) as http:
        assert http.post("/v1/auth/signup", json={"email": email, "password": password,
                                                  "display_name": "Demo Owner"}).status_code == 201
    doc_steps = steps()
    assert [kind for kind, _ in doc_steps].count("browser") == len(BROWSER_STEPS)
    # this checkout's CLI (the reader's is .venv/bin/tenant-api in theirs)
    tenant_api = str(Path(sys.executable).parent / "tenant-api")
    env = {**os.environ, "API": live.url, "MAILS": mails, "DEMO_PASSWORD": password, "TENANT_API": tenant_api}
    shell = Shell(env, cwd=workdir)
    try:
        # The only liberty taken: the demo owner's address (make run's is owner@demo.example).
        first = doc_steps[0][1].replace("owner@demo.example", email)
        assert first != doc_steps[0][1]
        outputs = [shell.run(first)]
        with chromium() as browser:
            for kind, body in doc_steps[1:]:
                if kind == "sh":
                    outputs.append(shell.run(body))
                else:
                    BROWSER_STEPS[body](live, shell, browser)
    finally:
        shell.close()
    text = "".join(outputs)
    # What the reader is told they will see.
    assert '"principal": "service_account"' in text and '"narrowed": true' in text
    assert '"status": "succeeded"' in text and "built by ci\n" in text  # the service account's runner ran it
    assert '"role": "auditor"' in text and '"verified": true' in text
    assert not [line for line in live.access.lines if "tinv_" in line or "tver_" in line]
