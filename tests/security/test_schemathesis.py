"""Schemathesis against a real uvicorn server, every operation of the OpenAPI document,
with real data: the two-organization world of tests/support/security.py is built first and
generated cases use its ids (path parameters fixed to our rows of the mapped table, and
body ids replaced by ours half of the time), so generation reaches past the 404s.

Seeded (SCHEMATHESIS_SEED), bounded (SCHEMATHESIS_EXAMPLES per operation and mode,
SCHEMATHESIS_BUDGET_SECONDS in all). The checks are one setting, ``CHECKS`` (or
SCHEMATHESIS_CHECKS=name,name): no 5xx, and the conformance checks of
``CONFORMANCE_CHECKS`` (statuses, content types and response bodies as documented).
The server caps long polls (a runner's claim may ask to wait 30 s for work) at
LONG_POLL_SECONDS (RUNNER_MAX_WAIT_SECONDS): generated waits are taken, briefly.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from tenant_api.app import create_app
from tests.support.live import serve
from tests.support import factories
from tests.support.tenants import bearer, make_token, signup
from tests.support.security import World, build_world, openapi, row_ids, tenant_refs

ALL_CHECKS = {
    "not_a_server_error": not_a_server_error,
    "status_code_conformance": openapi_checks.status_code_conformance,
    "content_type_conformance": openapi_checks.content_type_conformance,
    "response_schema_conformance": openapi_checks.response_schema_conformance,
    "response_headers_conformance": openapi_checks.response_headers_conformance,
}
# The document lists every status, content type and schema an operation answers with
# (tenant_api.contract): what the server sends must conform.
CONFORMANCE_CHECKS = ("status_code_conformance", "content_type_conformance", "response_schema_conformance")
CHECKS = tuple(os.environ.get("SCHEMATHESIS_CHECKS", ",".join(("not_a_server_error", *CONFORMANCE_CHECKS))).split(","))

SEED = int(os.environ.get("SCHEMATHESIS_SEED", "10"))
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "5"))
BUDGET_SECONDS = float(os.environ.get("SCHEMATHESIS_BUDGET_SECONDS", "180"))
LONG_POLL_SECONDS = 0.2

# Run last, in this order: they remove what other operations' real ids point at, or end
# the credential in use.
LAST = ("DELETE", "POST /v1/auth/logout")


@pytest.fixture(scope="module")
def server(settings) -> Iterator[str]:
    with serve(create_app(settings.with_runners(max_wait_seconds=LONG_POLL_SECONDS))) as url:
        yield url


@pytest.fixture(scope="module")
async def world(client, module_admin) -> World:
    return await build_world(client, module_admin, "st")


def order(operation: Any) -> int:
    label = f"{operation.method.upper()} {operation.path}"
    return next((i + 1 for i, last in enumerate(LAST) if label.startswith(last)), 0)


async def test_schemathesis_finds_no_server_error(world, client, module_admin, server):
    unknown = [c for c in CHECKS if c not in ALL_CHECKS]
    assert not unknown, f"SCHEMATHESIS_CHECKS names unknown checks {unknown}; known: {sorted(ALL_CHECKS)}"
    checks = [ALL_CHECKS[c] for c in CHECKS]
    a = world.a
    refs = await tenant_refs(module_admin, a)
    schema = schemathesis.openapi.from_dict(openapi(client))
    operations = sorted((r.ok() for r in schema.get_all_operations()), key=order)
    # Real ids per path parameter: our rows of the mapped table, never the credential in use.
    real: dict[str, dict[str, list[str]]] = {}
    for operation in operations:
        mapping = factories.path_params(operation.path) or {}
        params = {}
        for p in operation.path_parameters:
            ids = [i for i in await row_ids(module_admin, mapping[p.name], a.organization_id, 20) if i != a.token_id]
            params[p.name] = ids
        real[f"{operation.method.upper()} {operation.path}"] = params

    failures: list[str] = []
    stats = {"cases": 0, "skipped_operations": 0}
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    def run(operation: Any) -> None:
        label = f"{operation.method.upper()} {operation.path}"
        public = (operation.method.upper(), operation.path) in factories.PUBLIC_OPERATIONS
        streams = (operation.method.upper(), operation.path) in factories.STREAMS
        params = real[label]
        strategies = [operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)]
        if not streams:  # a stream we may read never ends; its 404 and 4xx paths are covered
            strategies.append(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
            if params and all(params.values()):
                ours = {p: ids[0] for p, ids in params.items()}
                strategies += [operation.as_strategy(generation_mode=mode, path_parameters=ours)
                               for mode in GenerationMode]
        headers = {} if public else {"Authorization": f"Bearer {a.token}"}

        @seed(SEED)
        @settings(max_examples=EXAMPLES * len(strategies), deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def cases(data: Any) -> None:
            case = data.draw(st.one_of(strategies))
            if params and all(params.values()) and data.draw(st.booleans()):
                case.path_parameters = {**(case.path_parameters or {}),
                                        **{p: data.draw(st.sampled_from(ids)) for p, ids in params.items()}}
            if isinstance(case.body, dict) and data.draw(st.booleans()):
                case.body = {k: refs.get(factories.UUID_FIELDS.get(k, ""), v) for k, v in case.body.items()}
            stats["cases"] += 1
            response = case.call(base_url=server, headers=headers, timeout=15)
            statuses[response.status_code // 100 * 100] += 1
            case.validate_response(response, checks=checks, headers=headers)

        try:
            cases()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{label}: {str(exc)[:1500]}")

    for operation in operations:
        if time.monotonic() - started > BUDGET_SECONDS:
            stats["skipped_operations"] += 1
            continue
        await asyncio.to_thread(run, operation)

    print(f"\nschemathesis: {stats['cases']} cases on {len(operations) - stats['skipped_operations']}/"
          f"{len(operations)} operations in {time.monotonic() - started:.0f}s, "
          f"status classes {dict(sorted(statuses.items()))}"
          f" (checks: {', '.join(CHECKS)})")
    assert not failures, f"{len(failures)} operations failed:\n" + "\n\n".join(failures[:20])
    assert stats["skipped_operations"] == 0, "SCHEMATHESIS_BUDGET_SECONDS ran out before every operation ran"


async def test_stream_events_conform_to_the_document(client, server):
    """The event stream, read to its end (the credential revoked mid-stream): every event,
    message and error, matches the document's event schema, the JSON in each data field
    included. Generation rarely reaches a stream that ends, so this reads one on purpose."""
    t = await signup(client)
    r = await client.post("/v1/conversations", headers=t.token_auth,
                          json={"project_id": t.project_id, "kind": "CHANNEL", "name": "streamed"})
    assert r.status_code == 201, r.text
    conversation = r.json()["id"]
    for body in ("one", "two"):
        assert (await client.post(f"/v1/conversations/{conversation}/messages", headers=t.token_auth,
                                  json={"body": body})).status_code == 201
    reader = await make_token(client, t, ["conversations:read"])
    doc = openapi(client)
    path = "/v1/conversations/{conversation_id}/stream"
    case = schemathesis.openapi.from_dict(doc)[path]["GET"].Case(
        path_parameters={"conversation_id": conversation}, query={"after": 0})
    call = asyncio.create_task(asyncio.to_thread(case.call, base_url=server, headers=bearer(reader["token"]),
                                                 timeout=30))
    await asyncio.sleep(1.5)  # the two messages are on their way
    assert (await client.delete(f"/v1/tokens/{reader['id']}", headers=t.token_auth)).status_code == 204
    # the next message wakes the stream; its fetch finds the credential revoked: event error, end
    assert (await client.post(f"/v1/conversations/{conversation}/messages", headers=t.token_auth,
                              json={"body": "three"})).status_code == 201
    response = await asyncio.wait_for(call, 30)
    assert response.status_code == 200
    text = response.text
    assert text.count("event: message") == 2 and "event: error" in text and '"status":401' in text, text
    checks = [ALL_CHECKS[c] for c in CONFORMANCE_CHECKS]
    case.validate_response(response, checks=checks)
    # the check has teeth: the stream's old description (a string per event) does not pass
    doc["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"] = {"type": "string"}
    stale = schemathesis.openapi.from_dict(doc)[path]["GET"].Case(
        path_parameters={"conversation_id": conversation}, query={"after": 0})
    with pytest.raises(FailureGroup) as stale_failure:
        stale.validate_response(response, checks=checks)
    assert "SSE event violates schema" in str(stale_failure.value)
