"""Each generic resource states which write path serves it, and is mounted on it."""

import dataclasses
import types
import uuid

import pytest

from tenant_api.resources.base import TenantService, resource_router
from tenant_api.resources.org import workspaces
from tenant_api.routes import RESOURCES

# Every resource's write path, as it states it (Resource.write_path). "fast": create,
# update and delete on the request's asyncpg connection, no session; "orm": hooks that
# query through the session. A change here is a decision made in review.
WRITE_PATHS = {
    "workspace": "fast", "project": "fast", "invite": "orm",  # its writes are its own actions
    "agent": "fast", "agent_template": "orm", "agent_email_rule": "fast", "agent_conversation": "orm",
    "video_call": "orm", "service": "orm", "device_token": "orm",
    "conversation": "orm", "conversation_member": "orm",
    "desktop_config": "fast", "desktop_vm": "orm", "robot_macro": "orm", "robot_macro_execution": "orm",
    "desktop_connection": "orm",  # read-only over HTTP: no write routes
    "task": "fast", "computer_use_task": "fast", "job_schedule": "orm", "job": "orm",
}


def _mounted_write_path(res) -> str | None:
    """The fast write routes are given ``write_service`` (the request's asyncpg connection,
    write_transaction); the ORM ones ``service`` (and with it the session). None: no write routes."""
    router = resource_router(dataclasses.replace(res, actions=[]))
    ops = (f"create_{res.name}", f"update_{res.name}", f"delete_{res.name}")
    writes = [h for route in router.routes for h in getattr(route, "route_handlers", []) if h.operation_id in ops]
    if not writes:
        return None
    paths = {"fast" if "write_service" in h.parsed_fn_signature.parameters else "orm" for h in writes}
    assert all({"service", "write_service"} & set(h.parsed_fn_signature.parameters) for h in writes)
    assert len(paths) == 1, paths
    return paths.pop()


def test_every_resource_states_its_write_path_and_is_mounted_on_it():
    assert {res.name: res.write_path for res in RESOURCES} == WRITE_PATHS
    mounted = {res.name: _mounted_write_path(res) for res in RESOURCES}
    no_generic_writes = {"desktop_connection", "invite"}
    assert mounted == {name: (None if name in no_generic_writes else path) for name, path in WRITE_PATHS.items()}


async def test_a_fast_service_that_reaches_for_the_orm_fails_loudly():
    """A hook written against the session cannot run silently outside the request's
    transaction on the fast path: it names the resource and the fix."""

    class UsesSession(TenantService):
        async def before_write(self, values, existing):  # type: ignore[no-untyped-def]
            await self.get_one_or_none(organization_id=self.org, name=values["name"])
            return values

    service = dataclasses.replace(workspaces, service=UsesSession, write_path="fast").service_class()
    ctx = types.SimpleNamespace(organization_id=uuid.uuid4())
    fast = service.on_connection(object(), ctx)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="write_path='orm'"):
        await fast.before_write({"name": "x"}, None)
