"""The one place to extend when a tenant table or a route is added.

The security tests are driven by the database catalog (every table with an
``organization_id``) and by the OpenAPI document (every path and operation). They know
nothing about particular tables or routes except what is declared here, and they FAIL
(never skip) when they meet a table or route they cannot cover, with a message pointing
back to this file.

What to add, and when:

* A new generic resource (``tenant_api.routes.RESOURCES``) with a create route usually
  needs nothing: a row is created through ``POST <path>`` with a body generated from the
  OpenAPI schema, and ``<path>/{item_id}`` is mapped to its table (a nested resource's
  parent parameter to its parent's table). Resources are created parents first (their
  ``parents`` and ``nest``), so a body can name a row of a resource listed after it in
  RESOURCES. If its body has a UUID field that is not in ``UUID_FIELDS`` (e.g.
  ``agent_id``), add the field there.
* A tenant table with no create route (or one needing a special body): add an async
  function to ``ROW_FACTORIES`` that gives the tenant at least one row in it (through
  the HTTP API whenever a route exists).
* A route whose path has a parameter other than a RESOURCES ``{item_id}``: add it to
  ``PATH_PARAMS`` (path template as in the OpenAPI document -> parameter -> table).
* A route that must work without a credential: add it to ``PUBLIC_OPERATIONS``.
* A body field the generator cannot invent a valid value for: ``BODY_OVERRIDES``.
* A response that never ends (Server-Sent Events): ``STREAMS``. A route the OpenAPI
  document cannot describe (a WebSocket): ``UNDOCUMENTED_ROUTES``. A read whose body
  holds no id by design: ``ID_FREE_READS``. Each entry names the test covering what
  the generic walk cannot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.testing import AsyncTestClient

from tenant_api.audit import sealing
from tenant_api.routes import RESOURCES
from tests.support.tenants import Tenant, make_token, signup

# Body / query fields holding the id of another row -> the table that row lives in.
# Generated bodies use the tenant's oldest row of that table (signup's defaults for
# workspace and project); array fields (``project_ids``) get a one-element list.
# A table named here also gets an entry in the ``refs`` a row factory receives.
UUID_FIELDS: dict[str, str] = {
    "workspace_id": "workspace",
    "project_id": "project",
    "project_ids": "project",
    "token_id": "platform_token",
    "user_id": "user_account",
    "organization_id": "organization",
    "agent_id": "agent",
    "template_id": "agent_template",
    "conversation_id": "conversation",
    # conversation members and message senders: the generated member_type/sender_type is
    # the enum's first value, USER (and a USER message's sender must be the caller)
    "member_id": "user_account",
    "sender_id": "user_account",
    "config_id": "desktop_configs",
    "vm_id": "desktop_virtual_machine",
    "macro_id": "robot_macro",
    "schedule_id": "job_schedule",
    "job_id": "job",
    "desktop_vm_id": "desktop_virtual_machine",
    # runner claims' filters
    "vm_ids": "desktop_virtual_machine",
    "desktop_vm_ids": "desktop_virtual_machine",
}

# String fields that need a particular shape; value(unique) -> str.
STRING_VALUES: dict[str, Callable[[str], str]] = {
    "email": lambda u: f"{u}@example.com",
    "password": lambda u: f"pw-{u}-long-enough",
    "avatar_url": lambda u: f"https://example.com/avatars/{u}.png",  # agent profiles, templates' defaults
    "target": lambda u: f"{u}@example.com",  # email rules: forward (the first action) needs an address
    "ip_address": lambda u: "192.0.2.10",  # desktop VMs (TEST-NET-1)
    # webhooks: the discard port on loopback (the suite allows private targets); nothing listens
    "url": lambda u: f"http://127.0.0.1:9/hooks/{u}",
}

# (METHOD, path template) -> fields to set instead of generated values.
_TARGET = {"kind": "command", "ref": "echo"}
_ENV = [{"name": "LOG_LEVEL", "value": "info", "secret": False},
        {"name": "API_KEY", "value": "not-a-real-key", "secret": True}]
BODY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/tokens"): {"scopes": ["agents:read"]},
    # generated timestamps lie a day ahead; a call cannot start in the future (null: now)
    ("POST", "/v1/video-calls"): {"started_at": None, "participants": []},
    ("PATCH", "/v1/video-calls/{item_id}"): {"participants": []},
    # env names are identifiers (no hyphen); one plain entry, one secret
    ("POST", "/v1/services"): {"env": _ENV},
    ("PATCH", "/v1/services/{item_id}"): {"env": _ENV},
    # the oldest VM runs (ROW_FACTORIES start it for an execution): keep it running
    ("PATCH", "/v1/desktop-vms/{item_id}"): {"status": "running"},
    # output is free JSON (no schema to generate from)
    ("POST", "/v1/robot-macro-executions/{item_id}/finish"): {"output": {"step": 1}},
    # webhooks subscribe to known event types
    ("POST", "/v1/webhooks"): {"event_types": ["*"]},
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"event_types": ["job.*", "task.done"]},
    # a trial is not both converted and cancelled, and ends after it starts
    ("PUT", "/v1/trial"): {"ends_at": "2099-01-01T00:00:00+00:00", "converted_at": None, "cancelled_at": None},
    # a yearly cron, so no scheduler fires these rows during a run; targets are objects
    ("POST", "/v1/job-schedules"): {"cron": "0 0 1 1 *", "timezone": "UTC", "target": _TARGET},
    ("PATCH", "/v1/job-schedules/{item_id}"): {"cron": "0 0 1 1 *", "timezone": "UTC", "target": _TARGET},
    # a manual run: project + target (not from a schedule); a PATCH may only cancel
    ("POST", "/v1/jobs"): {"schedule_id": None, "target": _TARGET, "labels": []},
    ("PATCH", "/v1/jobs/{item_id}"): {"status": "cancelled"},
    # tasks and computer-use tasks start in their initial state
    ("POST", "/v1/tasks"): {"status": "todo"},
    ("PATCH", "/v1/tasks/{item_id}"): {"status": "todo"},
    ("POST", "/v1/computer-use-tasks"): {"status": "queued"},
    ("PATCH", "/v1/computer-use-tasks/{item_id}"): {"status": "cancelled"},
}

# Columns a new row of the table starts with (besides its lifecycle's initial status): the
# raw-SQL isolation tests insert copies of existing rows, which must look freshly made
# (a copy of a claimed job would carry its lease and claim, which a queued row cannot).
_UNCLAIMED = {"attempt": 0, "lease_expires_at": None, "claim_secret_hash": None, "claimed_by_token_id": None,
              "claimed_at": None, "heartbeat_at": None, "progress": None, "error": None, "exit_code": None,
              "started_at": None, "finished_at": None}
PRISTINE: dict[str, dict[str, Any]] = {
    "job": _UNCLAIMED,
    "computer_use_task": _UNCLAIMED,
    "robot_macro_execution": _UNCLAIMED,
}

# Operations reachable without a credential. Every other operation in the OpenAPI
# document must answer 401 to an anonymous request.
PUBLIC_OPERATIONS: set[tuple[str, str]] = {
    ("POST", "/v1/auth/signup"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/auth/verify"),  # the verification mail's secret is the credential
    ("POST", "/v1/invites/preview"),  # the invite page: the invite secret is the credential
    ("POST", "/v1/invites/signup"),
}

# Path parameters of non-RESOURCES routes: path template -> {parameter: table}.
# "<table>.<column>" takes that column of the table's rows instead of their ids.
_VM = {"vm_id": "desktop_virtual_machine"}
_CONVERSATION = {"conversation_id": "conversation"}
PATH_PARAMS: dict[str, dict[str, str]] = {
    "/v1/tokens/{token_id}": {"token_id": "platform_token"},
    "/v1/tokens/{token_id}/rotate": {"token_id": "platform_token"},
    "/v1/agents/{agent_id}/profile": {"agent_id": "agent"},
    "/v1/desktop-vms/{vm_id}/start": _VM,
    "/v1/desktop-vms/{vm_id}/stop": _VM,
    "/v1/desktop-vms/{vm_id}/terminate": _VM,
    "/v1/conversations/{conversation_id}/messages": _CONVERSATION,
    "/v1/conversations/{conversation_id}/stream": _CONVERSATION,
    "/v1/organization/members/{user_id}": {"user_id": "user_account"},
    "/v1/projects/{project_id}/members": {"project_id": "project"},
    "/v1/projects/{project_id}/members/{user_id}": {"project_id": "project", "user_id": "project_membership.user_id"},
    "/v1/jobs/{job_id}/logs": {"job_id": "job"},
    # "<table>[<condition>]": the organization's own invites (project_id null), not a project's
    "/v1/organization/invites/{invite_id}": {"invite_id": "project_invite[project_id is null]"},
    "/v1/organization/invites/{invite_id}/resend": {"invite_id": "project_invite[project_id is null]"},
    "/v1/service-accounts/{account_id}": {"account_id": "service_account"},
    "/v1/service-accounts/{account_id}/tokens": {"account_id": "service_account"},
    "/v1/robot-macro-executions/{item_id}/heartbeat": {"item_id": "robot_macro_execution"},
    "/v1/robot-macro-executions/{item_id}/finish": {"item_id": "robot_macro_execution"},
    "/v1/webhooks/{webhook_id}": {"webhook_id": "webhook"},
    "/v1/webhooks/{webhook_id}/rotate-secret": {"webhook_id": "webhook"},
    "/v1/webhooks/{webhook_id}/deliveries": {"webhook_id": "webhook"},
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}": {"webhook_id": "webhook", "delivery_id": "webhook_delivery"},
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": {"webhook_id": "webhook",
                                                                     "delivery_id": "webhook_delivery"},
}

# Responses that never end (Server-Sent Events). The buffering test client would wait
# forever for one, so the walks never GET them with an id the caller can see; the
# cross-organization 404 and the 401 walks still cover them (those answer at once).
# Isolation of what they deliver is tested through a real server in
# tests/areas/test_conversations.py (test_stream_isolation_between_organizations,
# test_stream_respects_project_restriction, test_revoked_token_stream_stops).
STREAMS: set[tuple[str, str]] = {
    ("GET", "/v1/conversations/{conversation_id}/stream"),
}

# Routes of the application that the OpenAPI document does not list (besides /docs and
# /health), with the test that covers them.
UNDOCUMENTED_ROUTES: dict[str, str] = {
    # OpenAPI has no WebSocket operations. test_isolation_http tests it directly
    # (test_websocket_refuses_anonymous_and_other_organizations_vms); tests/areas/test_desktops.py
    # its protocol, refusals and bookkeeping.
    "/v1/desktop-connections/ws": "WebSocket of the robot clients",
    # Operators' Prometheus scrape, not the API: a METRICS_TOKEN bearer, no tenant data.
    # tests/ops/test_operations.py covers its refusals and series.
    "/metrics": "Prometheus metrics",
    # Pages for browsers (tenant_api.web), public, reading nothing; tests/areas/test_invite_page.py
    # drives them in Chromium and checks their headers.
    "/invites/accept": "the invite page",
    "/verify-email": "the email verification page",
    "/static/{name}": "the pages' script and style sheet",
    # Public like /health; reads only alembic_version (tests/ops/test_faults.py, test_restart.py).
    "/ready": "readiness probe for orchestrators",
}

# GET operations whose response holds no id at all by design, so "returns no id of
# another organization" says nothing about them; the read test asserts they indeed hold
# none. What they read comes from tables test_isolation_sql covers, under RLS.
ID_FREE_READS: dict[tuple[str, str], str] = {
    ("GET", "/v1/notification-preferences"): "the caller's own channel switches (booleans and event names)",
    # event ids appear only in problems, and the trail here is intact (tests/areas/test_audit_verify.py)
    ("GET", "/v1/audit/verify"): "the tamper-evidence report of the caller's organization: counts, seal seq, digest",
}


def template(path: str) -> str:
    """A Litestar path as the OpenAPI document spells it: {agent_id:uuid} -> {agent_id}."""
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


def resource_paths() -> dict[str, str]:
    """Collection path template -> table, for every generic resource (nested ones too:
    "/v1/agents/{agent_id}/email-rules"), parents before children: a resource comes after
    the tables its body references (``parents``) and its ``nest`` parent."""
    pending = list(RESOURCES)
    ordered: dict[str, str] = {}
    while pending:
        placed = {res.model.__tablename__ for res in RESOURCES} - {r.model.__tablename__ for r in pending}
        for res in pending:
            needs = {m.__tablename__ for m in res.parents.values()}
            if getattr(res, "nest", None):
                needs.add(res.nest.model.__tablename__)
            needs &= {r.model.__tablename__ for r in RESOURCES}  # tables made elsewhere (signup) are there
            if needs - {res.model.__tablename__} <= placed:
                ordered[template(res.path)] = res.model.__tablename__
                pending.remove(res)
                break
        else:
            raise AssertionError(f"RESOURCES with circular parents: {[r.name for r in pending]}")
    return ordered


def path_params(path: str) -> dict[str, str] | None:
    """{parameter: table} for a path template of the OpenAPI document, or None if unknown."""
    if path in PATH_PARAMS:
        return PATH_PARAMS[path]
    for res in RESOURCES:
        collection = template(res.path)
        params = {res.nest.param: res.nest.model.__tablename__} if getattr(res, "nest", None) else {}
        if path == collection:
            return params
        if path == f"{collection}/{{item_id}}" or path.startswith(f"{collection}/{{item_id}}/"):
            return {**params, "item_id": res.model.__tablename__}
    return None


# --- row factories ---------------------------------------------------------------------
# async (client, tenant, refs) -> None; refs maps table -> the tenant's oldest row of it,
# for every table UUID_FIELDS names.
Factory = Callable[[AsyncTestClient, Tenant, dict[str, str]], Awaitable[None]]


def _ok(response: Any, status: int = 201) -> dict[str, Any]:
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == status, f"row factory: {where}: {response.status_code} {response.text}"
    return response.json() if response.content else {}


async def _platform_token(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # signup already made a session and an all-scopes token; add a project-restricted one.
    await make_token(client, tenant, ["agents:read"], project_ids=[tenant.project_id])


async def _agent_profile(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # The oldest agent (made from a template, so it has a profile already): PUT replaces it.
    _ok(await client.put(f"/v1/agents/{refs['agent']}/profile", headers=tenant.token_auth,
                         json={"display_name": "Ada", "role": "support"}), 200)


async def _user_trial(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    ends = (dt.datetime.now(dt.UTC) + dt.timedelta(days=14)).isoformat()
    _ok(await client.put("/v1/trial", headers=tenant.token_auth, json={"plan": "pro", "ends_at": ends}), 200)


async def _notification_preference(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    body = {"email": {"enabled": False}, "push": {"enabled": True, "events": {"agent.failed": False}}}
    _ok(await client.put("/v1/notification-preferences", headers=tenant.token_auth, json=body), 200)


async def _conversation_member(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # The generated conversation already lists the tenant's user (its members field):
    # add the oldest agent, of the same (oldest) project.
    _ok(await client.post(f"/v1/conversations/{refs['conversation']}/members", headers=tenant.token_auth,
                          json={"member_type": "AGENT", "member_id": refs["agent"]}))


async def _conversation_message(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    for body in ("hi", "hello again"):
        _ok(await client.post(f"/v1/conversations/{refs['conversation']}/messages", headers=tenant.token_auth,
                              json={"body": body}))


async def _robot_macro_execution(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # An execution needs a running VM: start the oldest one (the macros' VM), keep it running.
    vm = refs["desktop_virtual_machine"]
    _ok(await client.post(f"/v1/desktop-vms/{vm}/start", headers=tenant.token_auth), 200)
    _ok(await client.post(f"/v1/robot-macros/{refs['robot_macro']}/executions", headers=tenant.token_auth,
                          json={"vm_id": vm}))


async def _desktop_connection(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # Rows are written by the robot clients' WebSocket only: connect, ping, leave, and
    # wait until the handler has closed the row (so nothing changes under the tests).
    vm = refs["desktop_virtual_machine"]
    with await client.websocket_connect(f"/v1/desktop-connections/ws?vm_id={vm}", headers=tenant.token_auth) as ws:
        hello = ws.receive_json(timeout=5)
        assert hello.get("type") == "connected", hello
        ws.send_json({"type": "ping"})
        assert ws.receive_json(timeout=5) == {"type": "pong"}
    deadline = time.monotonic() + 10
    while True:
        row = _ok(await client.get(f"/v1/desktop-connections/{hello['connection_id']}", headers=tenant.token_auth), 200)
        if row["status"] == "disconnected":
            return
        assert time.monotonic() < deadline, f"desktop connection still open: {row}"
        await asyncio.sleep(0.02)


async def _project_membership(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # Someone of another organization accepts an invite to the tenant's default project.
    invitee = await signup(client, f"invitee{uuid.uuid4().hex[:8]}")
    invite = _ok(await client.post(f"/v1/projects/{tenant.project_id}/invites", headers=tenant.token_auth,
                                   json={"email": invitee.email, "role": "viewer"}))
    _ok(await client.post("/v1/invites/accept", headers=invitee.session_auth, json={"invite_token": invite["invite_token"]}))


async def _service_account(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    sa = _ok(await client.post("/v1/service-accounts", headers=tenant.token_auth,
                               json={"name": f"sa-{uuid.uuid4().hex[:6]}", "role": "member"}))
    _ok(await client.post(f"/v1/service-accounts/{sa['id']}/tokens", headers=tenant.token_auth,
                          json={"name": "t", "scopes": ["agents:read"]}))


async def _organization_invite(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # project_invite rows with project_id null: invites to the organization itself.
    _ok(await client.post("/v1/organization/invites", headers=tenant.token_auth,
                          json={"email": f"org-{uuid.uuid4().hex[:8]}@example.com", "role": "auditor"}))


async def _job_log(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # Only a job's running attempt writes its log: claim the oldest queued job (left running).
    claim = _ok(await client.post("/v1/jobs/claim", headers=tenant.token_auth, json={"project_ids": [tenant.project_id]}), 200)
    _ok(await client.post(f"/v1/jobs/{claim['job']['id']}/logs", headers=tenant.token_auth,
                          json={"claim_secret": claim["claim_secret"], "data": "started\n"}))


async def _idempotency_key(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    _ok(await client.post("/v1/agents", headers={**tenant.token_auth, "Idempotency-Key": uuid.uuid4().hex},
                          json={"project_id": tenant.project_id, "name": f"idem-{uuid.uuid4().hex[:8]}"}))


async def _webhook(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # One webhook (subscribed to everything), then a change it hears about: an event and
    # its delivery. The delivery worker then tries it once (nothing listens on the discard
    # port): an attempt in the delivery log.
    from tenant_api.db.engine import create_api_engine
    from tenant_api.webhooks.delivery import Deliverer

    _ok(await client.post("/v1/webhooks", headers=tenant.token_auth,
                          json={"url": f"http://127.0.0.1:9/hooks/{uuid.uuid4().hex[:8]}", "event_types": ["*"]}))
    _ok(await client.post("/v1/tasks", headers=tenant.token_auth, json={"project_id": tenant.project_id, "summary": "hook"}))
    settings = client.app.state.settings
    engine = create_api_engine(settings.database.worker_database())  # the scheduler process's login
    deliverer = Deliverer(engine, settings.webhooks, client.app.state.webhook_key)
    try:
        assert await deliverer.run_once(organization_id=uuid.UUID(tenant.organization_id)), "nothing to deliver"
    finally:
        await deliverer.aclose()
        await engine.dispose()


async def _audit_seal(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # No route writes seals: the scheduler (or `tenant-api audit seal`) does, as its own login.
    url = client.app.state.settings.database.worker_url
    sealed = await sealing.seal(url, organization_id=uuid.UUID(tenant.organization_id))
    assert sealed, "row factory: sealing the tenant's audit trail sealed nothing"


# Tables needing more than (or something else than) the generic RESOURCES creation, run
# in this order after it. organization, organization_membership, workspace, project and
# token_audit_log rows are created by signup itself (and by every write, for the audit
# log); token_usage rows by every request; invite_outbox rows with every invite.
ROW_FACTORIES: dict[str, Factory] = {
    "platform_token": _platform_token,
    "agent_profile": _agent_profile,
    "user_trial": _user_trial,
    "notification_preference": _notification_preference,
    "conversation_member": _conversation_member,
    "conversation_message": _conversation_message,
    "robot_macro_execution": _robot_macro_execution,
    "desktop_connection": _desktop_connection,
    "project_membership": _project_membership,
    "service_account": _service_account,
    "project_invite (organization invites)": _organization_invite,  # not a table name: generic creation too
    "job_log": _job_log,
    "webhook": _webhook,  # and webhook_event, webhook_delivery, webhook_attempt
    "idempotency_key": _idempotency_key,
    "audit_seal": _audit_seal,  # last: seals the events of everything above
}
