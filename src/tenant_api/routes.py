"""Every route of the API, in one registry: the ROUTES each area module declares.

An area module ends with ``ROUTES = Routes(resources=[...], handlers=[...])``
(tenant_api.routing): its generic resources, each mounted as one router under its path
with its ``actions``, and its other routers. Add a new area's ROUTES to ``AREAS``; the app
mounts ``route_handlers()`` and nothing else, and the catalog-driven tests walk
``RESOURCES`` (with the OpenAPI document), so a new resource is attacked without a new
test.
"""

from __future__ import annotations

from typing import Any

from tenant_api import readiness
from tenant_api.audit import controller as audit
from tenant_api.auth import controller as auth
from tenant_api.invites import controller as invites
from tenant_api.ops import metrics
from tenant_api.resources import (
    agents,
    billing,
    calls,
    conversations,
    desktop_connections,
    desktops,
    jobs,
    members,
    notifications,
    org,
    services,
    tasks,
)
from tenant_api.resources.base import Resource, resource_router
from tenant_api.routing import Routes
from tenant_api.runs import controller as runs
from tenant_api.service_accounts import controller as service_accounts
from tenant_api.tokens import controller as tokens
from tenant_api.web import pages
from tenant_api.webhooks import controller as webhooks

AREAS: tuple[Routes, ...] = (
    readiness.ROUTES, metrics.ROUTES, pages.ROUTES,
    auth.ROUTES, org.ROUTES, members.ROUTES, invites.ROUTES, service_accounts.ROUTES, tokens.ROUTES, audit.ROUTES,
    agents.ROUTES, calls.ROUTES, services.ROUTES, notifications.ROUTES, billing.ROUTES,
    conversations.ROUTES,
    desktops.ROUTES, desktop_connections.ROUTES,
    tasks.ROUTES, jobs.ROUTES, runs.ROUTES,
    webhooks.ROUTES,
)

RESOURCES: list[Resource] = [res for area in AREAS for res in area.resources]
"""Every generic resource, parents before children (the catalog suites create rows in this order)."""


def route_handlers() -> list[Any]:
    """What the app mounts: each resource's router, then each area's other routes."""
    return [*(resource_router(res) for res in RESOURCES), *(h for area in AREAS for h in area.handlers)]
