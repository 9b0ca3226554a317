"""Each generic resource states which read path serves it, and is mounted on it."""

import dataclasses

import pytest

from tenant_api.resources.agents import agents
from tenant_api.resources.base import ReadQueries, TenantService, resource_router
from tenant_api.routes import RESOURCES

# Every resource's read path, as it states it (Resource.read_path). A change here moves a
# route on or off the hot path: it is a decision, made in review, never a side effect.
READ_PATHS = {
    "workspace": "fast", "project": "fast", "invite": "orm",
    "agent": "fast", "agent_template": "fast", "agent_email_rule": "orm", "agent_conversation": "fast",
    "video_call": "orm", "service": "fast", "device_token": "orm",
    "conversation": "fast", "conversation_member": "fast",
    "desktop_config": "fast", "desktop_vm": "fast", "robot_macro": "fast", "robot_macro_execution": "orm",
    "desktop_connection": "fast",
    "task": "fast", "computer_use_task": "fast", "job_schedule": "fast", "job": "fast",
}


def _mounted_read_path(res) -> str:
    """Which path the mounted list and get routes take: the fast ones open their own read
    transaction on the pooled asyncpg connection (``read_transaction``), the ORM ones are
    given the resource's service."""
    router = resource_router(dataclasses.replace(res, actions=[]))  # the generic routes only
    reads = [h for route in router.routes for h in getattr(route, "route_handlers", [])
             if h.operation_id == f"get_{res.name}" or str(h.operation_id).startswith("list_")]
    assert len(reads) == 2, [h.operation_id for h in reads]
    paths = {"orm" if "service" in h.parsed_fn_signature.parameters else "fast" for h in reads}
    assert len(paths) == 1, paths
    return paths.pop()


def test_every_resource_states_its_read_path_and_is_mounted_on_it():
    assert {res.name: res.read_path for res in RESOURCES} == READ_PATHS
    assert {res.name: _mounted_read_path(res) for res in RESOURCES} == READ_PATHS


def test_a_fast_resource_whose_service_reads_on_its_own_refuses_to_mount():
    """Overriding page (or reading newest first) can no longer move a hot route to the ORM
    silently: the resource must say read_path="orm"."""

    class OwnPage(TenantService):
        async def page(self, *extra, limit, cursor, **filters):  # type: ignore[no-untyped-def]
            return await super().page(*extra, limit=limit, cursor=cursor, **filters)

    class NewestFirst(TenantService):
        newest_first = True

    for service in (OwnPage, NewestFirst):
        with pytest.raises(RuntimeError, match="read_path='orm'"):
            resource_router(dataclasses.replace(agents, service=service, actions=[]))
        assert _mounted_read_path(dataclasses.replace(agents, service=service, actions=[], read_path="orm")) == "orm"


def test_a_service_with_read_rules_of_its_own_keeps_the_orm_path():
    class Narrower(TenantService):
        async def get_visible(self, item_id, scope=None):  # type: ignore[no-untyped-def]
            return await super().get_visible(item_id, scope)

    assert ReadQueries.for_resource(agents, agents.service_class()) is not None
    assert ReadQueries.for_resource(agents, Narrower) is None
