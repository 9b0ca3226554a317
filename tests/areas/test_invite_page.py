"""The invite page in a real browser: the mailed link, opened in headless Chromium
against a real uvicorn server, signs the invitee up (or in) and accepts or declines in
place. Also: the page's security headers, the secret never reaching the server in a URL,
and the verification page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.live import Live, chromium, live_server

LINK = re.compile(r"(http://\S+/invites/accept#invite_token=tinv_[0-9A-Za-z]+)")
VERIFY_LINK = re.compile(r"(http://\S+/verify-email#token=tver_[0-9A-Za-z]+)")


@pytest.fixture(scope="module")
def live(settings) -> Iterator[Live]:
    with live_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def _signup(live: Live, name: str, verify: bool = True) -> dict:
    email, password = f"{name}@example.com", f"pw-{name}-long-enough"
    with live.http() as http:
        r = http.post("/v1/auth/signup", json={"email": email, "password": password, "display_name": name.title()})
        assert r.status_code == 201, r.text
        out = {**r.json(), "email": email, "password": password,
               "h": {"Authorization": f"Bearer {r.json()['session']['access_token']}"}}
    if verify:
        link = VERIFY_LINK.search(live.wait_for_mail(email, "Confirm")).group(1)
        with live.http() as http:
            r = http.post("/v1/auth/verify", json={"token": link.split("#token=")[1]})
            assert r.status_code == 200, r.text
    return out


def _wait_visible(browser: Any, element_id: str, timeout: float = 15) -> Any:
    return WebDriverWait(browser, timeout).until(ec.visibility_of_element_located((By.ID, element_id)))


def _text(browser: Any, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def test_new_invitee_signs_up_and_accepts_on_the_page(live, browser):
    alice = _signup(live, f"alice{uuid.uuid4().hex[:6]}")
    bob_email = f"bob{uuid.uuid4().hex[:6]}@example.com"
    with live.http() as http:
        r = http.post(f"/v1/projects/{alice['project_id']}/invites", headers=alice["h"],
                      json={"email": bob_email, "role": "editor"})
        assert r.status_code == 201, r.text
        shown = r.json()["invite_token"]
        assert r.json()["invite_url"] == f"{live.url}/invites/accept#invite_token={shown}"
    link = LINK.search(live.wait_for_mail(bob_email, "Invitation")).group(1)
    assert link.startswith(live.url + "/invites/accept#")  # PUBLIC_URL builds the link

    browser.get(link)
    _wait_visible(browser, "invite")
    assert _text(browser, "organization") == f"{alice['user']['display_name']}'s organization"
    assert _text(browser, "project") == "Default" and _text(browser, "role") == "editor"
    assert _text(browser, "inviter") == alice["user"]["display_name"] and _text(browser, "email") == bob_email
    assert "invite_token" not in browser.current_url  # out of the address bar and history
    _wait_visible(browser, "signup")
    browser.find_element(By.ID, "signup-name").send_keys("Bob Builder")
    browser.find_element(By.ID, "signup-password").send_keys("a-good-long-password")
    browser.find_element(By.ID, "signup-button").click()
    _wait_visible(browser, "done")
    assert "You joined the project Default of" in _text(browser, "done-text") and "as editor" in _text(browser, "done-text")

    # The account exists, verified by the mail's secret, and is a member of the project.
    with live.http() as http:
        r = http.post("/v1/auth/login", json={"email": bob_email, "password": "a-good-long-password",
                                              "organization_id": alice["organization_id"]})
        assert r.status_code == 200, r.text
        me = http.get("/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}).json()
        assert me["role"] == "project:editor" and me["project_ids"] == [alice["project_id"]]
        assert me["user"]["email_verified"] is True and me["user"]["display_name"] == "Bob Builder"
    # The secret never reached the server in a URL (only in request bodies).
    assert not [line for line in live.access.lines if "tinv_" in line]
    assert any("/v1/invites/signup" in line for line in live.access.lines)


def test_existing_user_signs_in_and_accepts_an_organization_invite(live, browser):
    alice = _signup(live, f"alice{uuid.uuid4().hex[:6]}")
    carol = _signup(live, f"carol{uuid.uuid4().hex[:6]}", verify=False)  # unverified: the mail's link proves it
    with live.http() as http:
        r = http.post("/v1/organization/invites", headers=alice["h"], json={"email": carol["email"], "role": "auditor"})
        assert r.status_code == 201, r.text
        # With the secret the inviter saw, the unverified account can do nothing.
        r2 = http.post("/v1/invites/accept", headers=carol["h"], json={"invite_token": r.json()["invite_token"]})
        assert r2.status_code == 403 and "not verified" in r2.json()["detail"]
    link = LINK.search(live.wait_for_mail(carol["email"], "Invitation")).group(1)

    browser.get(link)
    _wait_visible(browser, "signin")
    assert not browser.find_element(By.ID, "project").is_displayed()
    assert _text(browser, "role") == "auditor"
    browser.find_element(By.ID, "signin-password").send_keys("wrong password!")
    browser.find_element(By.ID, "signin-button").click()
    WebDriverWait(browser, 15).until(lambda d: "Wrong password" in d.find_element(By.ID, "message").text)
    browser.find_element(By.ID, "signin-password").clear()
    browser.find_element(By.ID, "signin-password").send_keys(carol["password"])
    browser.find_element(By.ID, "signin-button").click()
    _wait_visible(browser, "answer")
    browser.find_element(By.ID, "accept").click()
    _wait_visible(browser, "done")
    assert "You joined the organization" in _text(browser, "done-text")

    with live.http() as http:
        places = http.get("/v1/me/organizations", headers=carol["h"]).json()["items"]
        assert {p["organization_id"]: p["role"] for p in places} == {
            carol["organization_id"]: "owner", alice["organization_id"]: "auditor"}
        me = http.get("/v1/me", headers=carol["h"]).json()
        assert me["user"]["email_verified"] is True  # accepting through the mail proved the address


def test_decline_in_place_and_a_used_link(live, browser):
    alice = _signup(live, f"alice{uuid.uuid4().hex[:6]}")
    dave = _signup(live, f"dave{uuid.uuid4().hex[:6]}")
    with live.http() as http:
        r = http.post(f"/v1/projects/{alice['project_id']}/invites", headers=alice["h"],
                      json={"email": dave["email"], "role": "viewer"})
        assert r.status_code == 201, r.text
        invite_id = r.json()["id"]
    link = LINK.search(live.wait_for_mail(dave["email"], "Invitation")).group(1)
    browser.get(link)
    _wait_visible(browser, "signin")
    browser.find_element(By.ID, "signin-password").send_keys(dave["password"])
    browser.find_element(By.ID, "signin-button").click()
    _wait_visible(browser, "answer")
    browser.find_element(By.ID, "decline").click()
    WebDriverWait(browser, 15).until(lambda d: "You declined" in d.find_element(By.ID, "message").text)
    with live.http() as http:
        inv = http.get(f"/v1/projects/{alice['project_id']}/invites/{invite_id}", headers=alice["h"]).json()
        assert inv["status"] == "declined"
    # The same link again: the page says the invite is declined and offers nothing.
    browser.get(link)
    WebDriverWait(browser, 15).until(lambda d: "declined" in d.find_element(By.ID, "message").text)
    assert not browser.find_element(By.ID, "signin").is_displayed()
    assert not browser.find_element(By.ID, "signup").is_displayed()


def test_verification_page_and_security_headers(live, browser):
    browser.get_log("browser")  # drop what earlier tests logged (a 401 for a wrong password is logged)
    erin = _signup(live, f"erin{uuid.uuid4().hex[:6]}", verify=False)
    link = VERIFY_LINK.search(live.wait_for_mail(erin["email"], "Confirm")).group(1)
    assert link.startswith(live.url + "/verify-email#token=")
    browser.get(link)
    WebDriverWait(browser, 15).until(lambda d: "verified" in d.find_element(By.ID, "message").text)
    with live.http() as http:
        assert http.get("/v1/me", headers=erin["h"]).json()["user"]["email_verified"] is True
        for path in ("/invites/accept", "/verify-email", "/static/invite.js", "/static/page.css"):
            r = http.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-content-type-options"] == "nosniff"
        assert http.get("/static/../settings.py").status_code == 404
        assert http.get("/static/nothing.js").status_code == 404
        page = http.get("/invites/accept").text
        assert "<script>" not in page and "http" not in page.split("<body>")[1]  # nothing inline, nothing remote
    # The browser ran the page without a CSP violation or script error.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert errors == []
