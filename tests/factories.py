"""The one place to extend when a tenant table or a route is added.

The security tests are driven by the database catalog (every table with an
``organization_id``) and by the OpenAPI document (every path and operation). They know
nothing about particular tables or routes except what is declared here, and they FAIL
(never skip) when they meet a table or route they cannot cover, with a message pointing
back to this file.

What to add, and when:

* A new generic resource (``tenant_api.resources.REGISTRY``) with a create route usually
  needs nothing: a row is created through ``POST <path>`` with a body generated from the
  OpenAPI schema, and ``<path>/{item_id}`` is mapped to its table (a nested resource's
  parent parameter to its parent's table). If its body has a UUID field that is not in
  ``UUID_FIELDS`` (e.g. ``agent_id``), add the field there.
* A tenant table with no create route (or one needing a special body): add an async
  function to ``ROW_FACTORIES`` that gives the tenant at least one row in it (through
  the HTTP API whenever a route exists).
* A route whose path has a parameter other than a REGISTRY ``{item_id}``: add it to
  ``PATH_PARAMS`` (path template as in the OpenAPI document -> parameter -> table).
* A route that must work without a credential: add it to ``PUBLIC_OPERATIONS``.
* A body field the generator cannot invent a valid value for: ``BODY_OVERRIDES``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.testing import AsyncTestClient

from tenant_api.resources import REGISTRY
from tests.conftest import Tenant, make_token

# Body / query fields holding the id of another row -> the table that row lives in.
# Generated bodies use the tenant's oldest row of that table (signup's defaults for
# workspace and project); array fields (``project_ids``) get a one-element list.
UUID_FIELDS: dict[str, str] = {
    "workspace_id": "workspace",
    "project_id": "project",
    "project_ids": "project",
    "token_id": "platform_token",
    "user_id": "user_account",
    "organization_id": "organization",
}

# String fields that need a particular shape; value(unique) -> str.
STRING_VALUES: dict[str, Callable[[str], str]] = {
    "email": lambda u: f"{u}@example.com",
    "password": lambda u: f"pw-{u}-long-enough",
}

# (METHOD, path template) -> fields to set instead of generated values.
BODY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/tokens"): {"scopes": ["agents:read"]},
}

# Operations reachable without a credential. Every other operation in the OpenAPI
# document must answer 401 to an anonymous request.
PUBLIC_OPERATIONS: set[tuple[str, str]] = {
    ("POST", "/v1/auth/signup"),
    ("POST", "/v1/auth/login"),
}

# Path parameters of non-REGISTRY routes: path template -> {parameter: table}.
PATH_PARAMS: dict[str, dict[str, str]] = {
    "/v1/tokens/{token_id}": {"token_id": "platform_token"},
    "/v1/tokens/{token_id}/rotate": {"token_id": "platform_token"},
}


def template(path: str) -> str:
    """A Litestar path as the OpenAPI document spells it: {agent_id:uuid} -> {agent_id}."""
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


def resource_paths() -> dict[str, str]:
    """Collection path template -> table, for every generic resource (nested ones too:
    "/v1/agents/{agent_id}/email-rules")."""
    return {template(res.path): res.model.__tablename__ for res in REGISTRY}


def path_params(path: str) -> dict[str, str] | None:
    """{parameter: table} for a path template of the OpenAPI document, or None if unknown."""
    if path in PATH_PARAMS:
        return PATH_PARAMS[path]
    for res in REGISTRY:
        collection = template(res.path)
        params = {res.nest.param: res.nest.model.__tablename__} if getattr(res, "nest", None) else {}
        if path == collection:
            return params
        if path == f"{collection}/{{item_id}}" or path.startswith(f"{collection}/{{item_id}}/"):
            return {**params, "item_id": res.model.__tablename__}
    return None


# --- row factories ---------------------------------------------------------------------
# async (client, tenant, refs) -> None; refs maps table -> one id of the tenant's rows.
Factory = Callable[[AsyncTestClient, Tenant, dict[str, str]], Awaitable[None]]


async def _platform_token(client: AsyncTestClient, tenant: Tenant, refs: dict[str, str]) -> None:
    # signup already made a session and an all-scopes token; add a project-restricted one.
    await make_token(client, tenant, ["agents:read"], project_ids=[tenant.project_id])


# Tables needing more than (or something else than) the generic REGISTRY creation.
# organization, organization_membership, workspace, project and token_audit_log rows
# are created by signup itself (and by every write, for the audit log).
ROW_FACTORIES: dict[str, Factory] = {
    "platform_token": _platform_token,
}
